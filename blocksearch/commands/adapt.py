"""``blocksearch adapt lora | controlnet | ip-adapter``: a teacher's adapter carried onto a student by its
``block_map.json`` (docs/export.md); each adapter kind's handler imports its stage (adapt/finetune.py for a LoRA,
adapt/controlnet.py, adapt/ip_adapter.py) when it runs."""

from __future__ import annotations

from blocksearch.errors import BlocksearchError


def add_parser(verbs) -> None:
    """Register ``adapt`` and its adapter kinds (``lora``, ``controlnet``, ``ip-adapter``)."""
    adapt = verbs.add_parser("adapt", help="carry a teacher's LoRA, ControlNet or IP-Adapter onto a student (its "
                                           "block_map.json)",
                             description="Remap an adapter trained on the teacher onto a student that blocksearch "
                                         "cut from it, by the student folder's block_map.json.")
    sub = adapt.add_subparsers(dest="adapt_command", title="adapter kinds", metavar="<adapter>")
    p = sub.add_parser(
        "lora", help="remap a teacher's LoRA onto the student",
        description="Rename each LoRA module on a kept teacher module to its student module and drop those on "
                    "removed modules; print how many were kept, renamed and dropped, and the share of the LoRA's "
                    "weight norm kept. Reads diffusers/peft keys (unet.<module>.lora_A.weight, <module>.lora.down."
                    "weight) and kohya keys (lora_unet_<module>.lora_down.weight, .alpha); writes safetensors in "
                    "the input's key convention, which pipe.load_lora_weights(OUT) loads on the exported student. "
                    "A LoRA for another base model (a module the teacher lacks, other shapes, another denoiser) "
                    "is refused.")
    p.add_argument("lora", metavar="LORA", help="the teacher's LoRA: a .safetensors file or a folder with one")
    p.add_argument("--student", required=True, metavar="DIR",
                   help="a student folder with block_map.json (blocksearch export's or distill's)")
    p.add_argument("-o", "--out", required=True, help="output: a .safetensors file, or a folder that gets "
                                                      "pytorch_lora_weights.safetensors")
    kd = p.add_argument_group("fine-tuning on the student (adapt/finetune.py)")
    kd.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                    help="continue the mapped LoRA for N KD steps on the student, against the teacher with the "
                         "LoRA fused (only the LoRA trains; U-Net students); the result replaces OUT (default: 0, "
                         "mapping only)")
    kd.add_argument("--teacher", default=None, metavar="SPEC",
                    help="the teacher the student was cut from (default: the block map's, e.g. toy; a local "
                         "folder must be given here)")
    kd.add_argument("--lr", type=float, default=None, help="LoRA learning rate (default: 1e-3)")
    kd.add_argument("--batch-size", type=int, default=None, help="KD batch size (default: distill's, 16)")
    kd.add_argument("--data", default=None, help="toy, or an imagefolder with captions (default: toy)")
    kd.add_argument("--seed", type=int, default=None, help="data stream seed (default: 0)")
    kd.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.set_defaults(handler=main)
    c = sub.add_parser(
        "controlnet", help="cut a teacher's ControlNet as the student's U-Net was cut",
        description="Build the student's ControlNet from a teacher ControlNet (a diffusers ControlNetModel folder): "
                    "the student U-Net's down path with the teacher ControlNet's weights, one zero convolution per "
                    "student skip (the teacher's for the same skip) and the teacher ControlNet's mid block; it runs "
                    "in the stock StableDiffusionControlNetPipeline with the student. Students whose stages keep "
                    "different numbers of layers, and transformer students, are refused.")
    c.add_argument("controlnet", metavar="CONTROLNET", help="the teacher's ControlNet: a diffusers ControlNetModel "
                                                            "folder (safetensors)")
    c.add_argument("--student", required=True, metavar="DIR",
                   help="a student folder with block_map.json (blocksearch export's or distill's)")
    c.add_argument("-o", "--out", required=True, help="output folder: the student's ControlNetModel")
    c.set_defaults(handler=main_controlnet)
    ip = sub.add_parser(
        "ip-adapter", help="remap a teacher's IP-Adapter onto the student's cross-attention layers",
        description="Give each of the student's cross-attention layers the IP-Adapter weights (to_k_ip, to_v_ip) "
                    "of the teacher layer it came from, renumbered in diffusers' order (unet.attn_processors); "
                    "the image projection is unchanged. The output loads with the stock pipe.load_ip_adapter(OUT, "
                    "subfolder=\"\", weight_name=\"ip_adapter.safetensors\"); the adapter folder's image_encoder/ "
                    "is copied beside it. Transformer students, and an IP-Adapter for another base model, are "
                    "refused.")
    ip.add_argument("adapter", metavar="ADAPTER", help="the teacher's IP-Adapter: an ip_adapter .safetensors file "
                                                       "or a folder with ip_adapter.safetensors")
    ip.add_argument("--student", required=True, metavar="DIR",
                    help="a student folder with block_map.json (blocksearch export's or distill's)")
    ip.add_argument("--teacher", default=None, metavar="SPEC",
                    help="the teacher the student was cut from, for its layer order (read from its config; "
                         "default: the block map's teacher, e.g. toy; a local folder must be given here)")
    ip.add_argument("-o", "--out", required=True, help="output: a .safetensors file, or a folder that gets "
                                                       "ip_adapter.safetensors (and image_encoder/)")
    ip.set_defaults(handler=main_ip_adapter)


def main(args) -> int:
    """Remap the LoRA (and fine-tune it with ``--finetune-steps``); print the counts and where it went."""
    from blocksearch.adapt.finetune import lora_to_student

    if args.finetune_steps < 0:
        raise BlocksearchError(f"--finetune-steps {args.finetune_steps}; allowed: an integer >= 0")
    result, tuned = lora_to_student(args.lora, args.student, args.out, args.finetune_steps, args.teacher,
                                    args.device, lr=args.lr, batch_size=args.batch_size, data=args.data,
                                    seed=args.seed)
    print(result.summary())
    if tuned is not None:
        print(tuned.summary())
    print(f"student LoRA written to {result.out}")
    return 0


def main_controlnet(args) -> int:
    """Cut the ControlNet; print its skips and where it went."""
    from blocksearch.adapt.controlnet import adapt_controlnet

    _, counts = adapt_controlnet(args.controlnet, args.student, args.out)
    print(f"controlnet: {counts['zero_convs']} zero convolutions for the student's skips (the teacher's had "
          f"{counts['teacher_zero_convs']}); written to {args.out}")
    return 0


def main_ip_adapter(args) -> int:
    """Remap the IP-Adapter; print the layers kept and where it went."""
    from blocksearch.adapt.ip_adapter import adapt_ip_adapter

    result = adapt_ip_adapter(args.adapter, args.student, args.out, args.teacher)
    print(result.summary())
    print(f"student IP-Adapter written to {result.out}")
    return 0
