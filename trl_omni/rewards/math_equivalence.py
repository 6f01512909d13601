"""Symbolic math equivalence for the accuracy rules (`math_verify`), safe against inputs that would hang training."""

from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from ._common import logger


def _fallback_text(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .,;:!?\"'`*")


def _math_verify_equal(prediction: str, ground_truth: str, timeout_seconds: int) -> bool:
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def _parse(text: str) -> list:
        # A bare expression is read as LaTeX math first: the plain-expression extractor stops at the first number
        # ("3*x" -> 3).
        parsed = parse(f"${text}$", parsing_timeout=timeout_seconds) if "$" not in text else []
        return parsed or parse(text, parsing_timeout=timeout_seconds)

    gold = _parse(ground_truth)
    if not gold:
        return _fallback_text(prediction) == _fallback_text(ground_truth) and bool(prediction.strip())
    target = _parse(prediction)
    if not target:
        return False
    return bool(verify(gold, target, timeout_seconds=timeout_seconds))


class _MathVerifier:
    """Runs `math_verify` so that adversarial input cannot hang training.

    In the main thread, `math_verify`'s own `signal.alarm` timeouts apply (they interrupt parsing and sympy
    simplification). Signals only work in the main thread, so from any other thread (async rewards, thread pools)
    the check runs in a single worker process (started once, with `spawn`) whose main thread has those timeouts,
    and a wall-clock limit on the result kills and replaces the worker if it still does not answer.
    """

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            # Start-up (importing sympy) is not part of any comparison's time budget.
            pool.submit(_warm_up).result(timeout=300)
            self._pool = pool
        return self._pool

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)

    def equal(self, prediction: str, ground_truth: str, timeout_seconds: int) -> bool:
        if threading.current_thread() is threading.main_thread():
            return _math_verify_equal(prediction, ground_truth, timeout_seconds)
        with self._lock:
            future = self._get_pool().submit(_math_verify_equal, prediction, ground_truth, timeout_seconds)
            try:
                return bool(future.result(timeout=3 * timeout_seconds + 5))
            except FutureTimeout:
                self._kill_pool()
                return False
            except Exception as error:  # a crashed worker (e.g. killed for memory) must not stop training
                logger.warning("math_verify worker failed (%s); the comparison scores 0.", error)
                self._kill_pool()
                return False


def _warm_up() -> bool:
    import math_verify  # noqa: F401

    return True


_MATH_VERIFIER = _MathVerifier()


def math_equal(prediction: str, ground_truth: str, timeout_seconds: int = 5, max_length: int = 1000) -> bool:
    """Whether two answers are symbolically equal by `math_verify` (bare expressions are read as LaTeX math).

    In the main thread `math_verify`'s own `signal.alarm` timeouts (`timeout_seconds` per parse and per comparison)
    apply; from other threads the check runs in one worker process behind a wall-clock limit. Inputs longer than
    `max_length` characters are not parsed (False). A ground truth that does not parse is compared as text.
    """
    if len(prediction) > max_length or len(ground_truth) > max_length:
        return False
    return _MATH_VERIFIER.equal(prediction, ground_truth, timeout_seconds)
