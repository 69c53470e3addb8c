import Foundation

/// AdamW (Loshchilov & Hutter 2019), PyTorch's `torch.optim.AdamW` update, one loop over the flat
/// parameter buffer:
///
///     θ ← θ − lr·λ·θ                       (decoupled weight decay, matrices only)
///     m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²
///     θ ← θ − lr · (m / (1 − β₁ᵗ)) / (sqrt(v / (1 − β₂ᵗ)) + ε)
///
/// Weight decay applies to rank-2 tensors (projections, embeddings, experts), not to norms or
/// Infini's gates, as GPT-2/llm.c and most Llama recipes do.
///
/// Not `Sendable`: its moments and step count change on every update, unsynchronised; an
/// optimiser belongs to one training loop on one thread.
public final class AdamW {
    public var beta1: Float, beta2: Float, epsilon: Float, weightDecay: Float
    /// First and second moments, in the parameters' layout.
    public let m: ParameterSet, v: ParameterSet
    /// Steps taken (t of the bias correction).
    public private(set) var step: Int = 0
    /// Per scalar: 1 where weight decay applies.
    private let decayMask: [Bool]
    /// Per entry: whether it is an Infini gate β (`…self_attn.infini_beta`).
    private let gateMask: [Bool]
    /// The learning rate of Infini's gates β is `lr` times this. A β decides a mixture and reaches
    /// a useful value only after moving by several units, while Adam moves a parameter by about
    /// `lr` per step: at a fine-tune's 1e-3 a gate would stay where it started (1 by default).
    public var gateLearningRateMultiplier: Float = 1

    public init(parameters: ParameterSet, beta1: Float = 0.9, beta2: Float = 0.95, epsilon: Float = 1e-8,
                weightDecay: Float = 0.1) throws {
        try requireOption((0..<1).contains(beta1), "β1", beta1, "in 0..<1")
        try requireOption((0..<1).contains(beta2), "β2", beta2, "in 0..<1")
        try requireOption(epsilon > 0, "ε", epsilon, "> 0")
        try requireOption(weightDecay >= 0, "weight decay", weightDecay, ">= 0")
        (self.beta1, self.beta2, self.epsilon, self.weightDecay) = (beta1, beta2, epsilon, weightDecay)
        m = try ParameterSet(zerosLike: parameters)
        v = try ParameterSet(zerosLike: parameters)
        decayMask = parameters.entries.map { $0.shape.count == 2 }
        gateMask = parameters.entries.map { $0.name.hasSuffix(".infini_beta") }
    }

    /// Restores moments and the step count saved by a checkpoint.
    public func restore(step: Int, m: ParameterSet, v: ParameterSet) throws {
        try m.checkLayout(self.m.entries, "the optimizer's first moments")
        try v.checkLayout(self.v.entries, "the optimizer's second moments")
        try requireOption(step >= 0, "optimizer step", step, ">= 0")
        self.m.scalars.update(from: m.scalars, count: m.count)
        self.v.scalars.update(from: v.scalars, count: v.count)
        self.step = step
    }

    /// One update of `parameters` with `gradients` at learning rate `lr`. Both must have the
    /// layout of the parameters this optimizer was made for (its moments'), else
    /// ``ModelError/layoutMismatch(what:found:expected:)`` names the first entry that differs and nothing changes.
    public func update(_ parameters: ParameterSet, gradients g: ParameterSet, lr: Float) throws {
        try parameters.checkLayout(m.entries, "AdamW parameters")
        try g.checkLayout(m.entries, "AdamW gradients")
        step += 1
        let c1 = 1 - Foundation.pow(Double(beta1), Double(step)), c2 = 1 - Foundation.pow(Double(beta2), Double(step))
        let baseStep = lr / Float(c1), rc2 = Float(1 / c2.squareRoot())
        let (b1, b2, eps) = (beta1, beta2, epsilon)
        for (k, e) in parameters.entries.enumerated() {
            let p = parameters.scalars + e.offset, gp = g.scalars + e.offset
            let mp = m.scalars + e.offset, vp = v.scalars + e.offset
            let decay = decayMask[k] ? 1 - lr * weightDecay : 1
            let stepSize = gateMask[k] ? baseStep * gateLearningRateMultiplier : baseStep
            for i in 0..<e.count {
                let gi = gp[i]
                let mi = b1 * mp[i] + (1 - b1) * gi, vi = b2 * vp[i] + (1 - b2) * gi * gi
                mp[i] = mi
                vp[i] = vi
                p[i] = p[i] * decay - stepSize * mi / ((vi.squareRoot() * rc2) + eps)
            }
        }
    }
}

/// Linear warm-up to the peak, then cosine decay to `minFraction` of it at `totalSteps`.
public struct LearningRateSchedule: Sendable, Equatable {
    public var peak: Double, warmupSteps: Int, totalSteps: Int, minFraction: Double

    public init(peak: Double, warmupSteps: Int, totalSteps: Int, minFraction: Double = 0.1) throws {
        try requireOption(peak > 0 && peak.isFinite, "peak learning rate", peak, "> 0 and finite")
        try requireOption(warmupSteps >= 0, "warm-up steps", warmupSteps, ">= 0")
        try requireOption(totalSteps >= 1, "steps", totalSteps, ">= 1")
        try requireOption((0...1).contains(minFraction), "min fraction", minFraction, "in 0...1")
        (self.peak, self.warmupSteps, self.totalSteps, self.minFraction) = (peak, warmupSteps, totalSteps, minFraction)
    }

    /// The rate at step `s` (0-based).
    public func rate(at s: Int) -> Double {
        if s < warmupSteps { return peak * Double(s + 1) / Double(warmupSteps) }
        let span = max(1, totalSteps - warmupSteps)
        let progress = min(1, Double(s - warmupSteps) / Double(span))
        return peak * (minFraction + (1 - minFraction) * 0.5 * (1 + Foundation.cos(Double.pi * progress)))
    }
}
