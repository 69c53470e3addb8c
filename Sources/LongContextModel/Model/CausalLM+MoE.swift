import AttentionTensor
import MixtureOfExperts

/// Mixtral's sparse MLP on the model's rows: the MixtureOfExperts layer reading the experts'
/// weights in place from the model's flat parameter buffer (`block_sparse_moe.gate.weight`,
/// `block_sparse_moe.experts.{e}.w{1,2,3}.weight`), top-k routing renormalised over the k
/// (Mixtral's rule), dropless.
final class MoEActivations {
    let forward: MoEForward
    init(_ forward: MoEForward) { self.forward = forward }
}

extension CausalLM {
    var mixtureConfig: MoEConfig {
        get throws {
            try MoEConfig(hidden: config.hiddenSize, expertSizes: (0..<config.experts).map(config.expertSize),
                          topK: config.expertsPerToken, renormalize: true)
        }
    }

    func mixtureWeights(layer: Int) -> MoEWeights {
        let p = "model.layers.\(layer).block_sparse_moe.", P = parameters, E = config.experts
        return MoEWeights(gate: P.pointer(p + "gate.weight"),
                          w1: (0..<E).map { UnsafePointer(P.pointer(p + "experts.\($0).w1.weight")) },
                          w2: (0..<E).map { UnsafePointer(P.pointer(p + "experts.\($0).w2.weight")) },
                          w3: (0..<E).map { UnsafePointer(P.pointer(p + "experts.\($0).w3.weight")) })
    }

    /// Throws ``ModelError/nonFiniteTensor(name:file:index:)`` for the first router or expert weight that holds
    /// a NaN or infinity (a Mixtral; other models have none). The MoE kernels check their input rows
    /// on every call but read the weights unchecked, so the model checks them once, when it is made:
    /// whatever built the parameters (a checkpoint loader, which scans every tensor it reads, or a
    /// caller's own ``ParameterSet``).
    func checkExpertWeights() throws {
        guard config.architecture == .mixtral else { return }
        let moe = try mixtureConfig
        for layer in 0..<config.layers {
            do {
                try mixtureWeights(layer: layer).checkFinite(moe, prefix: "model.layers.\(layer).block_sparse_moe.")
            } catch MoEError.nonFinite(let name, let index) {
                throw ModelError.nonFiniteTensor(name: name, file: nil, index: index)
            }
        }
    }

    /// The experts on `h [N, D]`, added into the residual stream `x`; the router's auxiliary losses
    /// are summed into `pass`.
    func mixtureForward(layer: Int, h: Tensor, into x: inout Tensor, rows N: Int, keep: Bool, pass: ForwardPass,
                    threads: Int) throws -> MLPActivations {
        let D = config.hiddenSize
        var out = try Tensor(uninitialized: [N, D])
        let f = try moeForward(try mixtureConfig, weights: mixtureWeights(layer: layer), x: h.unsafeBaseAddress, tokens: N,
                               output: out.unsafeMutableBaseAddress(), keepForBackward: keep, threads: threads)
        pass.loadBalancingLoss += f.loadBalancingLoss
        pass.routerZLoss += f.zLoss
        let xp = x.unsafeMutableBaseAddress(), op = out.unsafeBaseAddress
        for i in 0..<(N * D) { xp[i] += op[i] }
        return keep ? .moe(MoEActivations(f)) : .none
    }

    /// The experts' backward from `dOut [N, D]` into `dh` (overwritten) and the weights' gradients.
    /// `auxWeight` is the load-balancing loss's weight in the loss being differentiated.
    func mixtureBackward(layer: Int, _ a: LayerActivations, state: MoEActivations, dOut: Tensor, dh: inout Tensor, rows N: Int,
                     gradients G: ParameterSet, auxWeight: Float, threads: Int) throws {
        let p = "model.layers.\(layer).block_sparse_moe.", E = config.experts
        let grads = MoEGradients(gate: G.pointer(p + "gate.weight"), w1: (0..<E).map { G.pointer(p + "experts.\($0).w1.weight") },
                                 w2: (0..<E).map { G.pointer(p + "experts.\($0).w2.weight") },
                                 w3: (0..<E).map { G.pointer(p + "experts.\($0).w3.weight") })
        let dhp = dh.unsafeMutableBaseAddress()
        dhp.update(repeating: 0, count: N * config.hiddenSize)
        try moeBackward(try mixtureConfig, weights: mixtureWeights(layer: layer), x: a.h2.unsafeBaseAddress, tokens: N,
                        forward: state.forward, outputGradient: dOut.unsafeBaseAddress, inputGradient: dhp, gradients: grads,
                        loadBalancingWeight: auxWeight, zLossWeight: 0, threads: threads)
    }
}
