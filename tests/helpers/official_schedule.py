"""Reference replays of the loops the schedule must match: the official ICoT-SI trainer's removal
loop (arXiv 2405.14838) and the HF Trainer's gradient-accumulation chunking."""

from axolotl_maskthought.ops.schedule import REMOVE_ALL

INF = float("inf")


def official_loop(batches_per_epoch: int, delta: float, start_epoch: int, remove_all_at, epochs: int):
    """Replay the official loop; per micro-batch: (count in force, optimizer reset?).

    The reset flag assumes some CoT was left in the previous batch (the other
    half of the official rule is covered by ``should_reset_optimizer`` below).
    """
    threshold = INF if remove_all_at is None else remove_all_at
    interval = int(round(batches_per_epoch / delta))
    scheduled, counter = 0, 0
    rows = []
    for epoch in range(epochs):
        if scheduled >= threshold:
            scheduled = INF
        for _ in range(batches_per_epoch):
            previous = scheduled
            if counter == interval or interval == 0:
                scheduled += 1
                counter = 0
            if epoch >= start_epoch:
                counter += 1
            reset = scheduled > previous
            if scheduled >= threshold:
                scheduled = INF
            rows.append((REMOVE_ALL if scheduled == INF else scheduled, reset))
    return rows


def hf_loop_first_micro_batches(batches_per_epoch: int, accumulation: int, epochs: int) -> list[int]:
    """First micro-batch (global index) of each optimizer step, chunked as the HF loop does:
    ``accumulation`` micro-batches per step, the epoch's last step taking the remainder."""
    firsts = []
    for epoch in range(epochs):
        indices = list(range(epoch * batches_per_epoch, (epoch + 1) * batches_per_epoch))
        firsts.extend(indices[start] for start in range(0, batches_per_epoch, accumulation))
    return firsts
