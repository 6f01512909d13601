from pathlib import Path

from setuptools import find_packages, setup


def read_version() -> str:
    for line in (Path(__file__).parent / "trl_omni" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("__version__ not found")


REQUIRED = [
    "torch>=2.6",
    "trl>=1.16.0,<1.17",
    "transformers>=5.18,<6",
    "accelerate>=1.10.1",
    "datasets>=4.7.0",
    "peft>=0.17",
    "pillow>=10.0",
    "safetensors>=0.4",
    "xxhash>=3.0",  # content fingerprints (also what `datasets` hashes with)
    "math-verify>=0.8",
]
EXTRAS = {
    "quantization": ["bitsandbytes>=0.45.1"],
    "tracking": ["tensorboard>=2.14"],
    "test": ["pytest>=8", "pytest-xdist>=3", "bitsandbytes>=0.45.1", "tensorboard>=2.14"],
}
EXTRAS["dev"] = EXTRAS["test"] + ["ruff>=0.6"]

setup(
    name="trl-omni",
    version=read_version(),
    description="Train unified-token multimodal models (Chameleon / Anole) to reason by drawing, on top of TRL.",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["trl_omni", "trl_omni.*"]),
    package_data={"trl_omni": ["accelerate_configs/*.yaml"]},
    install_requires=REQUIRED,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["trl-omni = trl_omni.cli.main:main"],
        "trl_omni.rewards": [
            "accuracy = trl_omni.rewards.accuracy:accuracy_reward",
            "format = trl_omni.rewards.format:format_reward",
            "format_thought = trl_omni.rewards.format:format_thought_reward",
            "perception = trl_omni.rewards.perception:PerceptionReward",
            "perception_calibrated = trl_omni.rewards.calibrated:PerceptionCalibratedReward",
            "reference_image = trl_omni.rewards.reference:ReferenceImageReward",
            "model_reward = trl_omni.rewards.model_reward:ModelReward",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
