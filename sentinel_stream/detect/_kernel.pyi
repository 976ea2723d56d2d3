"""Types of the compiled scoring kernel (``_kernel.c``); see :mod:`.kernels`."""

import numpy as np
import numpy.typing as npt

def score_route(
    x: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float64],
    cols: npt.NDArray[np.intp],
    floor: npt.NDArray[np.float32],
    nodes: npt.NDArray[np.int16],
    split: npt.NDArray[np.float32],
    root: npt.NDArray[np.int16],
    tree_start: npt.NDArray[np.int32],
    table: npt.NDArray[np.float64],
    floor_path: float,
    denominator: float,
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool,
    learn_margin: float,
    tail_score: float,
    scores: npt.NDArray[np.float64],
    deviations: npt.NDArray[np.float64],
    flags: npt.NDArray[np.bool_],
    teach: npt.NDArray[np.bool_],
    /,
) -> tuple[int, int, int]: ...
def path_lengths(
    v: npt.NDArray[np.float32],
    nodes: npt.NDArray[np.int16],
    split: npt.NDArray[np.float32],
    root: npt.NDArray[np.int16],
    tree_start: npt.NDArray[np.int32],
    table: npt.NDArray[np.float64],
    in_bag: npt.NDArray[np.bool_],
    out: npt.NDArray[np.float64],
    /,
) -> None: ...
