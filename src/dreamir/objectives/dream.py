"""DREAM: the retriever's distribution over candidates is written into the frozen LLM's query-focused heads,
and the LLM's next-token loss on the target is the retriever's loss. No relevance labels are used.

With ``dream_candidates="batch"`` a query's prompt holds every distinct candidate of the batch (its own and the
other queries'), and p is the softmax over all of them: the LLM's judgement then also pushes away passages
that do not help this query, not only its own BM25 neighbours. It is the default of ``dreamir train`` and
``dreamir adapt`` (their parallel layout reads each candidate once, whatever the prompts holding it);
``DreamLoss`` itself keeps ``candidates="own"``, the paper's step, since its frozen LLM may read candidates
one after another, where every prompt of a batch would hold the whole batch's candidates.

With ``target="proximal"`` the LLM's judgement is not followed as a gradient but turned into a target: the
starting retriever's own distribution over the candidates, moved one exponentiated-gradient step along the
LLM's -dL/dp, q = softmax(log p_start + eta * (-dL/dp)), and the loss is KL(q || p). To first order it is
DREAM's step (scaled by eta); unlike DREAM its optimum stays a bounded step from where the retriever started,
so many steps cannot carry p further than the LLM's one judgement of each example.

With ``target="uniform"`` the LLM judges the candidates at a fixed point, uniform p, whatever the retriever's
current p: q = softmax(-eta * n * dL/dp at uniform p), n the example's target tokens, and the loss is
KL(q || p). Since L at one-hot e_k is, to first order, L(uniform) + dL/dp_k - mean_j dL/dp_j, eta 1 makes q
the first-order estimate of REPLUG-LSR's q (softmax of the sum of log P(target | d_k)) from one DREAM pass
over all candidates instead of one pass per candidate. Why: at a peaked p, -dL/dp ranks the gold below
passages that hold little of p far more often than at uniform p (docs/experiments.md, the teacher
diagnostic), so the gradient target teaches less as the retriever sharpens; this judgement does not move."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from dreamir.distributed import share_of_mean
from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives.base import (
    CandidateSource,
    LoadLLM,
    Objective,
    ObjectiveOutput,
    RetrieverPrecision,
    TrainingInstance,
)
from dreamir.options import at_least, non_negative, positive
from dreamir.retriever import Retriever

# What DREAM's loss is: the LLM's loss itself, or KL to the proximal or the uniform target (module docstring).
DreamTarget = Literal["gradient", "proximal", "uniform"]
DREAM_TARGETS: tuple[str, ...] = ("gradient", "proximal", "uniform")


@dataclass
class DreamOptions:
    _argument_group_name = "dream options"  # its heading in --help

    heads: str | None = field(default=None, metadata={"help": "head file written by `dreamir heads` (dream)"})
    num_heads: int | None = field(
        default=None, metadata={"help": "heads injected; default: the head file's top_k"}
    )
    injection_mode: Literal["preserve", "replace", "prior"] = field(
        default="preserve", metadata={"help": "how p sets the documents' attention in a head (see METHOD)"}
    )
    reference_step: bool = field(
        default=False, metadata={"help": "full-prompt step instead of the cached one (slower, same loss)"}
    )
    # "batch" became the default once it beat "own" on the raw and warm set-ups (docs/experiments.md); runs
    # recorded before the option existed count as "own" (dreamir.arguments.BEFORE_THE_OPTION_EXISTED).
    dream_candidates: CandidateSource = field(
        default="batch",
        metadata={
            "help": "own: a query's prompt holds its own K candidates; batch: every distinct candidate of the "
            "batch (all processes' queries), p the softmax over all of them, so the LLM's judgement also "
            "pushes away passages shown to other queries. In the parallel layout with the document cache "
            "this costs attention over more cached keys, not more documents read"
        },
    )

    anchor_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of KL(p_start || p), the distance of p over the candidates from the starting "
            "retriever's own distribution, added to DREAM's loss so that training keeps what the retriever "
            "knew (0: no anchor)"
        },
    )

    dream_target: DreamTarget = field(
        default="gradient",
        metadata={
            "help": "gradient: the LLM's loss trains the retriever through p (the paper's DREAM); proximal: "
            "KL(q || p) towards q = softmax(log p_start + eta * (-dL/dp)), the starting retriever's "
            "distribution moved one step by the LLM (eta: --proximal-step); uniform: KL(q || p) towards "
            "q = softmax(-eta * n * dL/dp at uniform p), n the target's tokens: the LLM's judgement at a "
            "fixed point, to first order REPLUG-LSR's q at eta 1, from one pass over all candidates"
        },
    )
    proximal_step: float = field(
        default=1.0,
        metadata={
            "help": "eta of --dream-target proximal or uniform: how far the LLM's judgement moves the target "
            "(proximal: 1 is to first order DREAM's own step at the same learning rate; uniform: 1 is to "
            "first order REPLUG-LSR's q with beta 1)"
        },
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "num_heads")
        non_negative(self, "anchor_weight")
        positive(self, "proximal_step")


class DreamLoss(Objective):
    name = "dream"
    options_class = DreamOptions
    uses_llm = True

    def __init__(
        self,
        retriever: Retriever,
        llm: FrozenLLM,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        retriever_precision: RetrieverPrecision = "float32",
        reuse_prefix: bool = True,
        candidates: CandidateSource = "own",
        anchor_weight: float = 0.0,
        target: DreamTarget = "gradient",
        proximal_step: float = 1.0,
    ) -> None:
        super().__init__(retriever, temperature, learn_temperature, retriever_precision)
        if not llm.heads:
            raise ValueError("DREAM needs at least one selected head to inject into")
        if target not in DREAM_TARGETS:
            raise ValueError(f"target must be one of {DREAM_TARGETS}, got {target!r}")
        if proximal_step <= 0:
            raise ValueError(f"proximal_step must be positive, got {proximal_step}")
        self.llm = llm
        self.reuse_prefix = reuse_prefix
        self.candidates = candidates
        self.anchor_weight = anchor_weight
        self.target = target
        self.proximal_step = proximal_step
        if anchor_weight or target == "proximal":
            self.keep_starting_retriever()

    @classmethod
    def from_options(
        cls, retriever: Retriever, options: DreamOptions, load_llm: LoadLLM, **common: Any
    ) -> DreamLoss:
        if options.heads is None:
            raise ValueError("DREAM needs --heads (a head file from `dreamir heads`)")
        llm = load_llm(options.heads, options.num_heads, options.injection_mode)
        return cls(
            retriever,
            llm,
            reuse_prefix=not options.reference_step,
            candidates=options.dream_candidates,
            anchor_weight=options.anchor_weight,
            target=options.dream_target,
            proximal_step=options.proximal_step,
            **common,
        )

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        instances, scores, mask = self.scored_candidates(instances, self.candidates)
        probs = self.candidate_distribution(scores, mask)
        prompts = [
            self.llm.encode(i.query, [(d.title, d.text) for d in i.documents], i.target) for i in instances
        ]
        batch = self.llm.collate(prompts)
        if self.target != "gradient":
            loss, target_logs = self.target_loss(instances, batch, probs, mask)
        else:
            # A mean over target tokens: weighted by token counts across processes, not averaged per process
            # (the share is exactly 1.0 in one process, and multiplying by it changes no bit).
            loss = self.llm.target_loss(batch, probs, reuse_prefix=self.reuse_prefix) * share_of_mean(
                batch.target_tokens
            )
            target_logs = {}
        logs = {
            "entropy": self.entropy(probs),
            **self.gold_logs(probs, instances),
            **target_logs,
            **self.temperature_logs(),
        }
        if self.anchor_weight:
            divergence = self.anchor_divergence(instances, probs, mask)
            logs.setdefault("dream_loss", float(loss.detach()))
            logs["anchor_kl"] = float(divergence.detach())
            loss = loss + self.anchor_weight * divergence
        if self.candidates == "batch":
            logs["pool_size"] = float(scores.shape[1])
        return ObjectiveOutput(loss, logs)

    def slope_at(self, batch: Any, point: Tensor) -> tuple[Tensor, Tensor]:
        """dL_b/dp at the given p (no gradient to the retriever), each example's own target loss L_b, and
        those losses [B]."""
        point = point.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            losses = self.llm.target_loss(batch, point, reduction="example", reuse_prefix=self.reuse_prefix)
            (slope,) = torch.autograd.grad(losses.sum(), point)
        return slope, losses.detach()

    def proximal_target(
        self, instances: list[TrainingInstance], batch: Any, probs: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """q = softmax(log p_start + eta * (-dL_b/dp)) for every query b (no gradient), with each example's
        own target loss L_b taken at the current p, and those losses [B]."""
        slope, losses = self.slope_at(batch, probs)
        logits = self.starting_scores(instances, mask) / self.temperature.value.detach()
        start = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
        moved = (start - self.proximal_step * slope).masked_fill(~mask, float("-inf"))
        return torch.softmax(moved, dim=-1).detach(), losses

    def uniform_target(self, batch: Any, mask: Tensor) -> tuple[Tensor, Tensor]:
        """q = softmax(-eta * n_b * dL_b/dp at uniform p) for every query b (no gradient), n_b its target
        tokens, and the losses L_b at uniform p [B]."""
        uniform = mask / mask.sum(-1, keepdim=True)
        slope, losses = self.slope_at(batch, uniform)
        tokens = batch.target_tokens_per_example[:, None].to(slope)
        judged = (-self.proximal_step * tokens * slope).masked_fill(~mask, float("-inf"))
        return torch.softmax(judged, dim=-1).detach(), losses

    def target_loss(
        self, instances: list[TrainingInstance], batch: Any, probs: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """KL(q || p) towards the proximal or uniform target, averaged over queries (each query weighs the
        same, over every process's queries), and what it logs beside forward's common entries."""
        if self.target == "proximal":
            target, losses = self.proximal_target(instances, batch, probs, mask)
        else:
            target, losses = self.uniform_target(batch, mask)
        terms = torch.xlogy(target, target) - torch.xlogy(target, probs.clamp_min(1e-30))
        loss = terms.masked_fill(~mask, 0.0).sum(-1).mean() * share_of_mean(len(instances))
        logs = {
            "target_entropy": self.entropy(target),
            "dream_loss": float(losses.mean()),
            **{f"target_{k}": v for k, v in self.gold_logs(target, instances).items()},
        }
        return loss, logs
