"""Peak resident memory of the stack's worker processes, sampled in a thread while a measurement runs."""

from __future__ import annotations

import threading

MiB = 2**20


class RssSampler:
    """Samples each named root process and its descendants every `interval_s` seconds.

    Reports, per root, the peak of the tree's summed RSS (counts pages shared after fork more
    than once) and the peak RSS of its largest single process.
    """

    def __init__(self, roots: dict[str, int], *, interval_s: float = 0.25) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.peak_tree: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_process: dict[str, int] = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        import psutil

        for name, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            sizes = []
            for proc in procs:
                try:
                    sizes.append(proc.memory_info().rss)
                except psutil.Error:  # exited between listing and reading
                    continue
            if sizes:
                self.peak_tree[name] = max(self.peak_tree[name], sum(sizes))
                self.peak_process[name] = max(self.peak_process[name], max(sizes))

    def as_mib(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "tree_peak_mib": round(self.peak_tree[name] / MiB, 1),
                "largest_process_peak_mib": round(self.peak_process[name] / MiB, 1),
            }
            for name in self.roots
        }
