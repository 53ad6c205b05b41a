"""``blocksearch bench adapters`` (bench/adapters.py), its cheap parts: the LoRA's lesson in the training stream and
the evaluation prompts, read back by the bundled toy judge, and the report rendered from a results dict."""

import json

import torch

from blocksearch.bench.adapters import REMAP, lora_batch, lora_prompts, remapped, render_report
from blocksearch.cli import build_parser
from blocksearch.toy.judge import load_judge, predict_scenes
from blocksearch.toy.world import parse_prompt


def test_the_training_stream_draws_the_word_as_the_other_shape_in_half_of_each_batch():
    x, captions = lora_batch(16, 3)
    assert x.shape == (16, 3, 64, 64) and -1 <= float(x.min()) and float(x.max()) <= 1
    assert all(REMAP[0] in c.split() for c in captions[:8])
    images = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    read = predict_scenes(images, load_judge())
    assert read == [remapped(parse_prompt(c)) for c in captions]  # the judge reads the LoRA's meaning, not the words
    assert any(r != parse_prompt(c) for r, c in zip(read[:8], captions[:8]))  # the check can fail
    assert lora_batch(16, 3)[1] == captions and lora_batch(16, 4)[1] != captions  # a pure function of its index


def test_the_evaluation_prompts_all_say_the_word_and_are_fixed():
    prompts = lora_prompts(40)
    assert prompts == lora_prompts(40) and len({s for _, s in prompts}) == 40
    assert all(REMAP[0] in p.split() for p, _ in prompts)
    assert [p for p, _ in prompts[:8]] == [p for p, _ in prompts[:8] if len(parse_prompt(p).objects) == 1]
    assert remapped(parse_prompt("a small red circle")).caption == f"a small red {REMAP[1]}"


def test_the_report_renders_every_row_and_the_structural_round_trips():
    row = {"alignment_lora": 0.5, "alignment_plain": 0.25, "fid": 12.34, "generate_s": 1.0}
    result = {"student": {"design": "bk_small"}, "command": "blocksearch bench adapters", "wall_s": 1.0, "cpu_s": 1.0,
              "torch_threads": 1, "load_average_1min": [1.0, 2.0], "prompts": 32,
              "generation": {"steps": 10, "guidance": 3.0, "fid_reference_images": 128},
              "rows": {"teacher + LoRA": row, "student, no LoRA": row},
              "lora": {"rank": 8, "targets": ["to_q"], "steps": 1, "batch_size": 8, "lr": 1e-3, "loss_first_10": 1.0,
                       "loss_last_10": 0.5, "wall_s": 1.0},
              "adapt_lora": "lora: ...", "finetune": "finetune: ...", "finetune_steps": 30,
              "structural": {"controlnet": {"zero_convs": 8, "teacher_zero_convs": 12,
                                            "max_pixel_change_scale_1_vs_0": 0.1},
                             "ip_adapter": {"layers_kept": 9, "teacher_layers": 16}}}
    text = render_report(json.loads(json.dumps(result)))
    assert "| teacher + LoRA | 0.500 | 0.250 | 12.3 |" in text and "| student, no LoRA |" in text
    assert "8 of the teacher's 12 zero convolutions" in text and "9 of the teacher's 16" in text
    args = build_parser().parse_args(["bench", "adapters"])
    assert (args.lora_steps, args.finetune_steps, args.threads, args.out) == (150, 30, 1, "reports/adapters-toy")
