"""User-turn templates for the LLaVA-family models (CT-CHAT, VILA-M3). The conversation template
(system prompt, header tokens) is the model's own, from its checkout (`conv_templates[...]`), so it
is identified by the code fingerprint; these are the texts we put in the user turn. Bump the
name's version when you edit one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class UserTurn:
    name: str
    source: str
    conv_template: str          # key of the checkout's llava.conversation.conv_templates
    user: str                   # formatted with question=...

    def text(self, question: str) -> str:
        return self.user.format(question=question)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# CT-CHAT llava/serve/gradio_web_server.py: the volume is announced by "<image>\n <provided>".
CTCHAT_OFFICIAL = UserTurn(
    name="ctchat-official-v1", conv_template="llama3",
    source="CT-CHAT llava/serve/gradio_web_server.py (user turn '<image>\\n <provided>' + question)",
    user="<image>\n <provided>{question}")

# CT-SpatialVQA inference/ct-chat/run_custom_eval.py passed the bare question: no <image> (so the
# volume never reached the model) and no <provided>. We keep its wording but refuse to drop the
# image: "<image>\n" is prepended, LLaVA's usual placement.
CTCHAT_HARNESS = UserTurn(
    name="ctchat-harness-with-image-v1", conv_template="llama3",
    source="CT-SpatialVQA inference/ct-chat/run_custom_eval.py (bare question; '<image>\\n' added by ctsvqa)",
    user="<image>\n{question}")

# VLM-Radiology-Agent-Framework m3/demo/gradio_m3.py process_prompt: model cards + "<image>" +
# "This is a CT image.\n" + prompt. The model cards (the expert list) are left out: the experts are
# not run here, and with the cards the model is trained to ask for one instead of answering.
VILA_M3_OFFICIAL = UserTurn(
    name="vila-m3-official-no-expert-v1", conv_template="llama_3",
    source="VLM-Radiology-Agent-Framework m3/demo/gradio_m3.py (without model cards and expert turns)",
    user="<image>This is a CT image.\n{question}")

# CT-SpatialVQA inference/vila-m3/run_vista3d_eval.py build_messages: "<image> {question}" with the
# slice; the VISTA3D expert turns that followed are not included.
VILA_M3_HARNESS = UserTurn(
    name="vila-m3-harness-no-expert-v1", conv_template="llama_3",
    source="CT-SpatialVQA inference/vila-m3/run_vista3d_eval.py build_messages (without the expert turns)",
    user="<image> {question}")
