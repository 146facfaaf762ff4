"""The per-sample callbacks behind `fn.external_source`: sample number -> encoded bytes + draws.

The samplers (sampler.py, images.py) decide everything random in Python; a source turns a rank's
sample number into the sample's encoded bytes (one `os.pread` at the table's offset, through
`sharding.reader.SampleReader`) plus the drawn window, crop and flip, in the order of its graph's
declared inputs (`graphs.TRAIN_INPUTS`, `graphs.EVAL_INPUTS`, `images.IMAGE_INPUTS`). The source
is infinite: sample number = `iteration * batch_size + idx_in_batch + offset`, so restoring a
loader only sets `offset` before the pipeline is built.

Parallel sources and CUDA (DALI docs, docs/DESIGN.md): with `py_workers > 0` the source runs in worker
processes started by `fork`. Call `start_py_workers()` on every pipeline (loader.py does it when the
loader is made) BEFORE anything touches CUDA (torch.cuda, NCCL init); build the pipelines later.
The shared offset lives in an anonymous shared mapping inherited by the forked workers, which is
why it can still be set after the workers started.
"""

from __future__ import annotations

import mmap

import numpy as np

from dali_pipelines.decode import VIDEO_INPUTS, decode_for
from dali_pipelines.graphs import EVAL_INPUTS, TRAIN_INPUTS, in_order
from dali_pipelines.images import IMAGE_INPUTS, ImageTrainSampler, prescaled_matrices, window_path
from dali_pipelines.sampler import EvalSampler, TrainSampler
from sharding.reader import SampleReader, ShardTable


class SampleSource:
    """What every source shares: the shared offset, the file reading (picklable) and its names.

    Args:
        table: the shard table the rows index.
        batch_size: samples per batch (the iteration -> sample number step).
        names: the graph inputs this source returns, in order (`num_outputs` of the external source).
    """

    def __init__(self, table: ShardTable, batch_size: int, names: tuple[str, ...]):
        self.batch_size = batch_size
        self.names = names
        # One int64 shared with forked workers (MAP_SHARED | MAP_ANONYMOUS).
        self._offset = np.frombuffer(mmap.mmap(-1, 8), dtype=np.int64)
        self.reader = SampleReader(table)

    @property
    def num_outputs(self) -> int:
        """How many arrays each call returns."""
        return len(self.names)

    @property
    def offset(self) -> int:
        """Sample number of the pipeline's first sample."""
        return int(self._offset[0])

    @offset.setter
    def offset(self, value: int) -> None:
        self._offset[0] = value

    def __getstate__(self):
        # Pickled (spawn): the offset is frozen at its current value (the reader reopens its files).
        state = self.__dict__.copy()
        state["_offset"] = self._offset.copy()
        return state

    def sample_number(self, sample_info) -> int:
        """The rank's sample number of DALI's per-sample `SampleInfo`."""
        return (sample_info.iteration * self.batch_size + sample_info.idx_in_batch
                + int(self._offset[0]))

    def read(self, row: int) -> np.ndarray:
        """The encoded member of a row as a (nbytes,) uint8 array."""
        return np.frombuffer(self.reader.read(row), dtype=np.uint8)

    def read_window(self, row: int, start: int, span: int) -> tuple[np.ndarray, int]:
        """`SampleReader.read_window` as a (nbytes,) uint8 array and the window's first frame."""
        data, first = self.reader.read_window(row, start, span)
        return np.frombuffer(data, dtype=np.uint8), first


class TrainSource(SampleSource):
    """Per-sample callback of `graphs.train_graph`.

    Returns, in `graphs.TRAIN_INPUTS` order (numpy arrays, never numpy scalars: DALI rejects
    those): the storage format's window arrays (`decode.decode_for`: for video formats encoded
    (nbytes,) uint8 and decode_start () int32, the window's first frame in the encoded bytes;
    for jpeg_frames one JPEG per clip frame, frame0 .., and crop_pos), label () int32, start () int32 (the
    window's first frame in the stored sample), crop
    (2,) int32 = [x, y], flip () int32, row () int64, and only with an in-graph resize, size (2,)
    float32 = [width, height] to resize to (DALI warns about, and wastes, an unused output).
    """

    def __init__(self, table: ShardTable, sampler: TrainSampler, hw_decoder_load: float | None = None):
        self.decode = decode_for(table, hw_decoder_load)  # the storage format's step: what it reads, how it decodes
        names = TRAIN_INPUTS if sampler.resize_short is not None else TRAIN_INPUTS[:-1]
        names = (self.decode.train_inputs(sampler.clip_len, sampler.resize_short is not None)
                 + tuple(n for n in names if n not in VIDEO_INPUTS))
        super().__init__(table, sampler.batch_size, names)
        self.sampler = sampler

    def __call__(self, sample_info):
        d = self.sampler.draw(self.sample_number(sample_info))
        window = self.decode.train_arrays(self.reader, d, self.sampler)
        return in_order(self.names, **window, label=np.array(d.label, np.int32),
                        start=np.array(d.start, np.int32), crop=np.array([d.crop_x, d.crop_y], np.int32),
                        flip=np.array(d.flip, np.int32), row=np.array(d.row, np.int64),
                        size=np.array([d.width, d.height], np.float32))


class EvalSource(SampleSource):
    """Per-sample callback of `graphs.eval_graph`.

    Returns, in `graphs.EVAL_INPUTS` order: encoded (nbytes,) uint8, label () int32, video ()
    int32 (-1 = padding), frame_idx (N*T,) int32, crop (2,) int32 = [x, y], row () int64 and, only
    with an in-graph resize, size (2,) float32.
    """

    def __init__(self, table: ShardTable, sampler: EvalSampler):
        names = EVAL_INPUTS if sampler.resize_short is not None else EVAL_INPUTS[:-1]
        super().__init__(table, sampler.batch_size, names)
        self.sampler = sampler

    def __call__(self, sample_info):
        d = self.sampler.draw(self.sample_number(sample_info))
        return in_order(self.names, encoded=self.read(d.row), label=np.array(d.label, np.int32),
                        video=np.array(d.video, np.int32), frame_idx=d.frame_idx,
                        crop=np.array([d.crop_x, d.crop_y], np.int32), row=np.array(d.row, np.int64),
                        size=np.array([d.width, d.height], np.float32))


class ImageTrainSource(SampleSource):
    """Per-sample callback of `images.image_train_graph`.

    Returns, in `images.IMAGE_INPUTS` order: encoded (nbytes,) uint8 JPEG, label () int32, matrix
    (T, 2, 3) float32 (`images.window_matrices`, in the coordinates of the prescaled image), flip
    () int32, row () int64, start () int32 (always 0: the loader's `start` field), crop (2,) int32 =
    the start window's [x, y] in stored-image pixels (the loader's crop_x / crop_y), size (2,)
    float32 = [width, height] to resize the image to first (`images.prescale`).
    """

    def __init__(self, table: ShardTable, sampler: ImageTrainSampler):
        super().__init__(table, sampler.batch_size, IMAGE_INPUTS)
        self.sampler = sampler

    def __call__(self, sample_info):
        d = self.sampler.draw(self.sample_number(sample_info))
        matrix, (width, height) = prescaled_matrices(
            d.width, d.height, window_path(d.start, d.end, self.sampler.clip_len), self.sampler.crop)
        return in_order(self.names, encoded=self.read(d.row), label=np.array(d.label, np.int32),
                        matrix=matrix, flip=np.array(d.flip, np.int32), row=np.array(d.row, np.int64),
                        start=np.array(0, np.int32), crop=np.array(d.start[:2], np.int32),
                        size=np.array([width, height], np.float32))
