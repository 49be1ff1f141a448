"""Fake of VILA's llava/conversation.py: Conversation and conv_templates['llama_3'] (LLAMA_3 style)."""
import dataclasses
import os
from enum import Enum, auto
from typing import List


class SeparatorStyle(Enum):
    AUTO = auto()
    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()
    LLAMA_3 = auto()


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
        if self.sep_style != SeparatorStyle.LLAMA_3:
            raise NotImplementedError("fake conversation: only LLAMA_3 is implemented")
        out = "<|begin_of_text|>" + "<|start_header_id|>system<|end_header_id|>\n\n" + self.system + self.sep
        for role, message in self.messages:
            out += role + "<|end_header_id|>\n\n"
            if message:
                out += message + self.sep
        if os.environ.get("CTSVQA_FAKE_DROP_IMAGE") == "prompt":
            out = out.replace("<image>", "")
        return out

    def append_message(self, role, message):
        self.messages.append([role, message])

    def copy(self):
        return Conversation(system=self.system, roles=self.roles, messages=[[x, y] for x, y in self.messages],
                            offset=self.offset, sep_style=self.sep_style, sep=self.sep, sep2=self.sep2,
                            version=self.version)


conv_llama_3 = Conversation(
    system="Fake VILA system prompt for tests.",
    roles=("<|start_header_id|>user", "<|start_header_id|>assistant"),
    version="llama_v3", messages=[], offset=0, sep_style=SeparatorStyle.LLAMA_3, sep="<|eot_id|>")

conv_templates = {"llama_3": conv_llama_3}
default_conversation = conv_llama_3
