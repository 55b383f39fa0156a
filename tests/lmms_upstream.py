"""Run lmms-eval's CLI with the *upstream* `llava_hf` model, as the plain reference for sharp-prune's wrapper.

    python tests/lmms_upstream.py --model llava_hf --model_args pretrained=... --tasks ... (lmms-eval's own args)

Where torchvision loads, nothing is changed. Where it does not (this project's CPU machines), the upstream
wrappers cannot run at all: transformers builds no video processor without torchvision, qwen-vl-utils does not
import, `llava_hf`'s chat wrapper sends ``images=[]`` to a processor that reads ``images[0]``, and video files
need torchcodec. This script applies the same fixes the sharp-prune wrappers apply (torch-only processors,
qwen-vl-utils' video rules on PyAV, the two `llava_hf` ones), and nothing else (no pruning, no hooks), then
hands over to lmms-eval's own command line.
"""

from __future__ import annotations

import sys

from lmms_eval.cli.dispatch import main

from sharp_prune.integrations.lmms_eval import mixin

if not mixin._torchvision_works():
    from lmms_eval.models.chat import llava_hf as chat
    from lmms_eval.models.chat import qwen2_5_vl as chat_qwen2_5_vl
    from lmms_eval.models.simple import llava_hf as simple
    from lmms_eval.models.simple import qwen2_5_vl, qwen2_vl

    from sharp_prune.integrations.lmms_eval.qwen_vision_info import process_vision_info

    for module in (chat, simple, chat_qwen2_5_vl, qwen2_5_vl, qwen2_vl):
        module.AutoProcessor = mixin._TorchFreeAutoProcessor
    for module in (chat_qwen2_5_vl, qwen2_5_vl, qwen2_vl):
        module.process_vision_info = process_vision_info
    original_init = chat.LlavaHf.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        frames = int(getattr(self, "max_frames_num", 32))

        def read(video):
            from sharp_prune.video import probe_video, read_video

            return read_video(video, min(frames, probe_video(video).total_frames)).frames

        self._image_processor = mixin._EvalProcessor(self._image_processor, read)

    chat.LlavaHf.__init__ = __init__

if __name__ == "__main__":
    sys.argv[0] = "lmms_eval"
    main()
