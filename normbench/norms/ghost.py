"""Ghost batch normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better",
Algorithm 1): batch norm whose training statistics come from virtual ("ghost") batches."""

from __future__ import annotations

import torch

from normbench.norms.reference import ReferenceBatchNorm, stats_dtype


class GhostBatchNorm(ReferenceBatchNorm):
    """Batch norm over consecutive ghost batches of `ghost_batch_size` samples, per channel.

    Training: the batch (N, C, ...) is cut into ghost batches of G samples in order (the last
    one smaller when G does not divide N; one ghost batch when G >= N, i.e. plain batch norm);
    each is normalized with its own mean and biased variance over (G, *spatial). The running
    statistics take one batch-norm update per ghost batch, in order, as the paper's algorithm
    does: running <- (1 - m) * running + m * stat (unbiased variance), and `num_batches_tracked`
    counts ghost batches (momentum None: the cumulative average over them). Eval normalizes with
    the running statistics; `track_running_stats=False` uses ghost statistics in eval too.
    """

    def __init__(self, num_features: int, ghost_batch_size: int = 16, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True, dims: int = 2):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dims)
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be at least 1, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def ghost_batches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x as [(K, G, C, ...) full ghost batches, (1, R, C, ...) remainder]; empty parts left out."""
        size = min(self.ghost_batch_size, x.shape[0])
        full = (x.shape[0] // size) * size
        parts = [x[:full].reshape(full // size, size, *x.shape[1:])]
        if full < x.shape[0]:
            parts.append(x[full:].unsqueeze(0))
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if not self.training and self.track_running_stats:
            return super().forward(x)  # eval: running statistics, as batch norm
        xs = stats_dtype(x)
        outputs, means, unbiased = [], [], []
        for part in self.ghost_batches(xs):  # (K, G, C, *spatial)
            reduce = [d for d in range(part.dim()) if d not in (0, 2)]
            count = part[0].numel() // part.shape[2]  # values per channel in one ghost batch
            if count <= 1:
                raise ValueError(f"Expected more than 1 value per channel in each ghost batch when training, "
                                 f"got a ghost batch of size {list(part.shape[1:])}")
            var, mean = torch.var_mean(part, dim=reduce, correction=0, keepdim=True)  # (K, 1, C, 1, ...)
            outputs.append(((part - mean) * torch.rsqrt(var + self.eps)).flatten(0, 1))
            means.append(mean.reshape(part.shape[0], -1))  # (K, C)
            unbiased.append(var.reshape(part.shape[0], -1) * (count / (count - 1)))
        if self.training and self.track_running_stats:
            self.update_running(torch.cat(means).detach(), torch.cat(unbiased).detach())
        x_hat = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return self._affine(x_hat).to(x.dtype)

    @torch.no_grad()
    def update_running(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """One batch-norm update per ghost batch, in order, in closed form: means, variances (K, C)."""
        k = means.shape[0]
        if self.momentum is None:  # cumulative average over every ghost batch seen
            seen = self.num_batches_tracked.to(means.dtype)
            self.running_mean.copy_((seen * self.running_mean + means.sum(0)) / (seen + k))
            self.running_var.copy_((seen * self.running_var + variances.sum(0)) / (seen + k))
        else:  # running after K updates: (1-m)^K running + sum_l m (1-m)^(K-l) stat_l
            m = self.momentum
            weights = m * (1 - m) ** torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype)  # (K,)
            self.running_mean.copy_((1 - m) ** k * self.running_mean + weights @ means)
            self.running_var.copy_((1 - m) ** k * self.running_var + weights @ variances)
        self.num_batches_tracked.add_(k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"
