"""TensorBoard images of localization maps for a few fixed validation images."""

from __future__ import annotations

from ignite.engine import Engine, Events

from monai_pixelcam.visualize import map_grid

__all__ = ["TensorBoardMapHandler"]


class TensorBoardMapHandler:
    """Write ``image+mask | map`` rows of the first ``n_images`` images seen by an evaluator, once per run.

    The evaluator's data loader must not shuffle, so the same images appear at every validation and the
    maps can be compared across epochs. The global step is the evaluator's epoch, which MONAI's
    ``ValidationHandler`` sets to the trainer's epoch.

    Args:
        summary_writer: a ``SummaryWriter`` (shared with the run's other TensorBoard handlers).
        tag: image tag, e.g. ``"valpx/maps"``.
        n_images: number of rows.
        output_transform: engine output -> ``(images B x 3 x H x W, masks B x 1 x H x W, maps B x 1 x H x W)``.
    """

    def __init__(self, summary_writer, tag: str, output_transform, n_images: int = 4) -> None:
        self.writer = summary_writer
        self.tag = tag
        self.output_transform = output_transform
        self.n_images = n_images
        self._rows: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._rows = []

    def _collect(self, engine: Engine) -> None:
        have = sum(r[0].shape[0] for r in self._rows)
        if have >= self.n_images:
            return
        images, masks, maps = self.output_transform(engine.state.output)
        k = self.n_images - have
        self._rows.append((images[:k].detach().cpu(), masks[:k].detach().cpu(), maps[:k].detach().cpu()))

    def _write(self, engine: Engine) -> None:
        if not self._rows:
            return
        import torch

        images, masks, maps = (torch.cat(parts) for parts in zip(*self._rows))
        grid = map_grid(images, masks, [maps])
        self.writer.add_image(self.tag, grid, global_step=engine.state.epoch, dataformats="HWC")
