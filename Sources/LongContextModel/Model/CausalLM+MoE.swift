import AttentionTensor

/// Mixtral's MLP: the mixture-of-experts layer (module MixtureOfExperts) on the model's rows.
final class MoEActivations {}

extension CausalLM {
    func moeForward(layer: Int, h: Tensor, into x: inout Tensor, rows N: Int, keep: Bool, pass: ForwardPass,
                    threads: Int) throws -> MLPActivations {
        throw ModelError.invalidConfig("Mixtral layers: the mixture-of-experts layer is not wired in yet")
    }

    func moeBackward(layer: Int, _ a: LayerActivations, state: MoEActivations, dOut: Tensor, dh: inout Tensor, rows N: Int,
                     gradients G: ParameterSet, threads: Int) throws {
        throw ModelError.invalidConfig("Mixtral layers: the mixture-of-experts layer is not wired in yet")
    }
}
