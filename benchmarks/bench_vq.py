"""VQ encoder and decoder per-image time at Anole's real geometry (512 px, 32x32 codes, full VQGAN width), by dtype.

The model is `tiny_anole(vq_base_channels=128, vq_num_res_blocks=2)`: Anole's exact VQGAN (random weights, which
cost the same as real ones) around a tiny LM. Encoding goes through `ImageEncoder` (the path `pretokenize_images`
takes), decoding through `ChameleonVQDecoder` + `decode_images`. Dtypes are measured alternately in one process.
A bfloat16 encoder on CPU is so slow that it is timed on a smaller input (`--cpu-half-precision-size`) and
extrapolated to 512 px by the pixel count (convolution cost is linear in it), next to float32 at the same size.

Run: `PYTHONPATH=. python benchmarks/bench_vq.py --repeats 2` (CPU) or `--device cuda --batch 8 --repeats 5`.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from trl_omni.models import ChameleonVQDecoder, ImageEncoder, ImageVocabulary, decode_images
from trl_omni.testing import tiny_anole
from trl_omni.testing_data import make_image


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    parser.add_argument("--cpu-half-precision-size", type=int, default=64, help="input side for bf16/fp16 on CPU")
    args = parser.parse_args()
    device = args.device
    model, processor = tiny_anole(seed=0, vq_base_channels=128, vq_num_res_blocks=2, device=device)
    vocab = ImageVocabulary.from_model(model, processor)
    images = [make_image((640, 512), seed=i) for i in range(args.batch)]
    params = sum(p.numel() for p in model.model.vqmodel.encoder.parameters()) / 1e6
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} encoder={params:.1f}M params")

    encoders = {
        name: ImageEncoder(model, processor, batch_size=args.batch, dtype=DTYPES[name]) for name in args.dtypes
    }
    decoder32 = ChameleonVQDecoder(model.config.vq_config, processor.image_processor).to(device)
    decoders = {name: copy.deepcopy(decoder32).to(DTYPES[name]) for name in args.dtypes}
    grids = torch.randint(0, vocab.num_codes, (args.batch, *vocab.grid_size))
    small = args.cpu_half_precision_size
    pixels_small = torch.randn(args.batch, 3, small, small, device=device)

    results: dict[tuple[str, str], list[float]] = {}
    reference_codes = None
    for _ in range(args.repeats):
        for name, encoder in encoders.items():
            slow_on_cpu = device == "cpu" and name != "float32"
            if slow_on_cpu:
                # Extrapolated: float32 and this dtype at the small size, scaled by float32's full-size time later.
                vq = encoder._vqmodel
                with torch.no_grad():
                    seconds = _timed(lambda vq=vq, dtype=encoder.dtype: vq.encode(pixels_small.to(dtype)), device)
                results.setdefault(("encode@small", name), []).append(seconds / args.batch)
            else:
                codes = []
                seconds = _timed(lambda encoder=encoder, codes=codes: codes.append(encoder.encode(images)), device)
                results.setdefault(("encode", name), []).append(seconds / args.batch)
                if name == "float32":
                    reference_codes = codes[0]
                elif reference_codes is not None:
                    agree = float((codes[0] == reference_codes).float().mean())
                    results.setdefault(("codes equal to float32", name), []).append(agree)
            if device == "cpu" and name == "float32" and len(encoders) > 1:
                vq = encoder._vqmodel
                with torch.no_grad():
                    seconds = _timed(lambda vq=vq: vq.encode(pixels_small), device)
                results.setdefault(("encode@small", name), []).append(seconds / args.batch)
            if device == "cpu" and name != "float32":
                continue  # a bf16/fp16 decoder at 512 px on CPU takes minutes: encoder@small tells the story
            decoder = decoders[name]
            seconds = _timed(
                lambda decoder=decoder: decode_images(grids, decoder, vocab, batch_size=args.batch), device
            )
            results.setdefault(("decode", name), []).append(seconds / args.batch)

    for (what, name), values in sorted(results.items()):
        best = min(values) if what != "codes equal to float32" else sum(values) / len(values)
        unit = "" if what == "codes equal to float32" else " s/image"
        print(f"{what:>24} {name:>9}: {best:.4g}{unit}")
    if ("encode@small", "float32") in results and ("encode", "float32") in results:
        full32, small32 = min(results[("encode", "float32")]), min(results[("encode@small", "float32")])
        for name in args.dtypes:
            if name != "float32" and ("encode@small", name) in results:
                ratio = min(results[("encode@small", name)]) / small32
                print(f"{'encode (extrapolated)':>24} {name:>9}: {full32 * ratio:.4g} s/image ({ratio:.1f}x float32)")


if __name__ == "__main__":
    main()
