"""VQ encoder and decoder per-image time at Anole's real geometry (512 px, 32x32 codes, full VQGAN width), by dtype,
plus the decoder's memory layout and its float32 error against a float64 run.

The model is `tiny_anole(vq_base_channels=128, vq_num_res_blocks=2)`: Anole's exact VQGAN (random weights, which
cost the same as real ones) around a tiny LM. Encoding goes through `ImageEncoder` (the path `pretokenize_images`
takes), decoding through `ChameleonVQDecoder` + `decode_images`. Variants are measured alternately in one process,
after one warm-up round. A bfloat16 / float16 encoder on CPU is so slow that it is timed on a small input
(`--cpu-half-precision-size`) and extrapolated to 512 px by its ratio to float32 at that size (convolution cost is
linear in the pixel count); half-precision decoders are not timed on CPU.

Run: `PYTHONPATH=. python benchmarks/bench_vq.py --repeats 2` (CPU; add `--accuracy` for the float64 comparison) or
`--device cuda --batch 8 --repeats 3 --accuracy --compare-cpu --dtypes float32 bfloat16 float16`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

from trl_omni.models import ChameleonVQDecoder, ImageEncoder, ImageVocabulary, decode_images
from trl_omni.models.precision import exact_float32_convolutions
from trl_omni.testing import tiny_anole
from trl_omni.testing_data import make_image


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1, help="images per encode / decode call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"], choices=list(LAYOUTS))
    parser.add_argument("--accuracy", action="store_true", help="decoder max abs error against float64")
    parser.add_argument("--cpu-half-precision-size", type=int, default=64, help="input side for bf16/fp16 on CPU")
    parser.add_argument("--compare-cpu", action="store_true", help="codes of the GPU float32 encoder vs the CPU one")
    args = parser.parse_args()
    device = args.device
    on_cpu = device == "cpu"
    model, processor = tiny_anole(seed=0, vq_base_channels=128, vq_num_res_blocks=2, device=device)
    vocab = ImageVocabulary.from_model(model, processor)
    images = [make_image((640, 512), seed=i) for i in range(args.batch)]
    grids = torch.randint(0, vocab.num_codes, (args.batch, *vocab.grid_size))
    small = torch.randn(args.batch, 3, args.cpu_half_precision_size, args.cpu_half_precision_size, device=device)
    million = sum(p.numel() for p in model.model.vqmodel.encoder.parameters()) / 1e6
    print(f"device={torch.cuda.get_device_name() if not on_cpu else 'cpu'} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} batch={args.batch} encoder={million:.1f}M params")  # fmt: skip

    encoders = {
        name: ImageEncoder(model, processor, batch_size=args.batch, dtype=DTYPES[name]) for name in args.dtypes
    }
    base = ChameleonVQDecoder(model.config.vq_config, processor.image_processor).to(device)
    decoders = {
        (name, layout): copy.deepcopy(base).to(dtype=DTYPES[name], memory_format=LAYOUTS[layout])
        for name in args.dtypes
        for layout in args.layouts
        if not (on_cpu and name != "float32")
    }

    results: dict[tuple[str, str], list[float]] = {}
    codes_by_dtype: dict[str, torch.Tensor] = {}
    for round_index in range(args.repeats + 1):  # round 0 warms up (cuDNN algorithm choice, allocator)
        record = round_index > 0
        for name, encoder in encoders.items():
            if on_cpu:
                vq = encoder._vqmodel  # the dtype's copy ImageEncoder made
                with torch.no_grad():
                    seconds = _timed(lambda vq=vq, dtype=encoder.dtype: vq.encode(small.to(dtype)), device)
                if record:
                    results.setdefault(("encode@small", name), []).append(seconds / args.batch)
                if name != "float32":
                    continue
            found = []
            seconds = _timed(lambda encoder=encoder, found=found: found.append(encoder.encode(images)), device)
            codes_by_dtype[name] = found[0]
            if record:
                results.setdefault(("encode", name), []).append(seconds / args.batch)
        for (name, layout), decoder in decoders.items():
            seconds = _timed(
                lambda decoder=decoder: decode_images(grids, decoder, vocab, batch_size=args.batch), device
            )
            if record:
                results.setdefault((f"decode {layout}", name), []).append(seconds / args.batch)

    for (what, name), values in sorted(results.items()):
        print(f"{what:>24} {name:>9}: {min(values):.4g} s/image")
    reference = codes_by_dtype.get("float32")
    for name, codes in codes_by_dtype.items():
        if name != "float32" and reference is not None:
            print(f"{'codes equal to float32':>24} {name:>9}: {float((codes == reference).float().mean()):.4f}")
    if on_cpu and ("encode", "float32") in results:
        full, at_small = min(results[("encode", "float32")]), min(results[("encode@small", "float32")])
        for name in args.dtypes:
            if name != "float32":
                ratio = min(results[("encode@small", name)]) / at_small
                print(f"{'encode (extrapolated)':>24} {name:>9}: {full * ratio:.4g} s/image ({ratio:.0f}x float32)")

    if args.compare_cpu and not on_cpu and "float32" in codes_by_dtype:
        cpu_model, cpu_processor = tiny_anole(seed=0, vq_base_channels=128, vq_num_res_blocks=2)
        cpu_codes = ImageEncoder(cpu_model, cpu_processor, batch_size=args.batch).encode(images)
        agree = float((cpu_codes == codes_by_dtype["float32"]).float().mean())
        print(f"{'codes equal to CPU':>24} {'float32':>9}: {agree:.4f}")

    if args.accuracy:
        latents = vocab.codebook_on(device)[grids[:1].to(device)].permute(0, 3, 1, 2)
        with torch.no_grad():
            exact = copy.deepcopy(base).double()(latents.double())
            scale = float(exact.abs().max())
            for (name, layout), decoder in decoders.items():
                # "library": inside decode_images' precision context; "tf32": PyTorch's default on GPUs.
                for path in ["library", "tf32"] if not on_cpu and name == "float32" else ["library"]:
                    context = exact_float32_convolutions(device) if path == "library" else contextlib.nullcontext()
                    with context:
                        error = float((decoder(latents.to(DTYPES[name])).double() - exact).abs().max())
                    label = f"{name} {layout} ({path})"
                    print(f"{'decoder max abs error':>24} {label}: {error:.2e} (output max {scale:.2f})")


if __name__ == "__main__":
    main()
