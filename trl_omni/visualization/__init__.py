"""See the reasoning: rendered trajectories (interleaved text and images) as HTML pages and PNG strips, and their
bounded logging to trackers during training.

- [`render_trajectory`] / [`render_trajectories`]: token ids -> [`RenderedTrajectory`] (text pieces, decoded images,
  incomplete images marked with their token count), via the core's `ImageVocabulary.parse_segments`.
- Any object with `decode(codes) -> list[PIL.Image]` decodes the images: `trl_omni.models.vq_decoder.VQImageDecoder`
  (real VQGAN weights), `PaletteDecoder` (exact, palette codebooks) or [`FalseColorDecoder`] (the default; needs no
  weights: codes are coloured by a PCA projection of their codebook embeddings, so similar codes look alike).
- [`TrajectoryLogger`]: logs at most N rendered trajectories per step, within a byte budget, to tensorboard, wandb,
  trackio and/or files. [`RenderedTrajectoriesCallback`] wraps it as a `transformers.TrainerCallback`; trainers hand
  it completions with [`RenderedTrajectoriesCallback.submit`] and it renders only at logging steps.

Modules: `decoders` ([`FalseColorDecoder`]), `render` (trajectories, HTML pages, PNG strips), `trackers`
([`TrajectoryLogger`]) and `callbacks` ([`RenderedTrajectoriesCallback`]).
"""

from .callbacks import RenderedTrajectoriesCallback
from .decoders import FalseColorDecoder
from .render import RenderedTrajectory, TrajectoryPiece, render_html_page, render_trajectories, render_trajectory
from .trackers import SUPPORTED_TRACKERS, TrajectoryLogger, TrajectoryLogReport


__all__ = [
    "SUPPORTED_TRACKERS",
    "FalseColorDecoder",
    "RenderedTrajectoriesCallback",
    "RenderedTrajectory",
    "TrajectoryLogReport",
    "TrajectoryLogger",
    "TrajectoryPiece",
    "render_html_page",
    "render_trajectories",
    "render_trajectory",
]
