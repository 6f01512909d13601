import os
import tempfile


# No hub access exists on these machines: every test builds its models in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CLI's options cache (`trl_omni.cli.options`) goes to a temporary directory, not the user's ~/.cache.
os.environ.setdefault("TRL_OMNI_CACHE", tempfile.mkdtemp(prefix="trl-omni-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402


# Tiny models on few cores: one intra-op thread per test process (pytest-xdist runs one process per core) avoids
# oversubscription, which made tiny-model tests several times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """A shared tiny Chameleon + processor. Tests must not modify it in place (use `tiny_chameleon()` for that)."""
    from trl_omni.testing import tiny_chameleon

    return tiny_chameleon(seed=0)


@pytest.fixture(scope="session")
def vocab(tiny):
    from trl_omni import ImageVocabulary

    model, processor = tiny
    return ImageVocabulary.from_model(model, processor)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def anole(tmp_path_factory):
    """The real-layout Anole checkpoint (`trl_omni.testing.tiny_anole`), saved once per session and loaded back with
    `load_omni_model` (the path users take). `anole.path` is the checkpoint directory; tests that modify the model
    load their own copy from it."""
    from types import SimpleNamespace

    from trl_omni import load_omni_model
    from trl_omni.testing import tiny_anole

    path = tmp_path_factory.mktemp("anole") / "checkpoint"
    tiny_anole(seed=0, save_dir=path)
    model, processor = load_omni_model(path)
    return SimpleNamespace(path=path, model=model, processor=processor)
