"""Fake of CT-CHAT's llava/conversation.py: a Conversation with copy/append_message/get_prompt and
conv_templates['llama3'] (Llama-3 header tokens; a short stand-in system prompt)."""
import dataclasses
import os
from enum import Enum, auto
from typing import List


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: List[str]
    messages: List[List[str]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str = None
    version: str = "Unknown"

    def get_prompt(self):
        if self.sep_style != SeparatorStyle.MPT:
            raise NotImplementedError("fake conversation: only the MPT style (llama3) is implemented")
        out = self.system + self.sep
        for role, message in self.messages:
            out += role + message + self.sep if message else role
        if os.environ.get("CTSVQA_FAKE_DROP_IMAGE") == "prompt":     # a template that loses the image
            out = out.replace("<image>", "")
        return out

    def append_message(self, role, message):
        self.messages.append([role, message])

    def copy(self):
        return Conversation(system=self.system, roles=self.roles, messages=[[x, y] for x, y in self.messages],
                            offset=self.offset, sep_style=self.sep_style, sep=self.sep, sep2=self.sep2,
                            version=self.version)


conv_llama3 = Conversation(
    system="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nFake CT-CHAT system prompt; "
           "a CT volume is indicated by the <provided> token.",
    roles=("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    version="llama3",
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|eot_id|>",
)

conv_templates = {"llama3": conv_llama3}
default_conversation = conv_llama3
