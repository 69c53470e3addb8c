import ArgumentParser
import AttentionTensor
import Foundation
import MixtureOfExperts

/// `attn moe`: a mixture-of-experts layer on NumPy and safetensors files (SPEC.md § Mixture of
/// experts), and with `--dout` its gradients (selection fixed).
struct Moe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe",
        abstract: "Mixture of experts: out = Σ over each token's top-k experts of weight · w2 · (silu(w1 · x) ⊙ (w3 · x)).",
        discussion: """
        Weights: a .safetensors file with gate.weight [E, D] and, per expert e, experts.{e}.w1.weight \
        [F_e, D], experts.{e}.w2.weight [D, F_e], experts.{e}.w3.weight [F_e, D] (Mixtral's names \
        without the layer prefix; F_e may differ per expert). Routing: p = softmax(x · gateᵀ); the \
        top k by p (ties to the lower index), weighted by p (Switch, Qwen-MoE) or by p over the sum of \
        the top k (--renormalize, Mixtral). With --dout: the gradients of L = Σ out ⊙ dout (plus the \
        weighted auxiliary losses) with the selection held fixed.
        """)

    @Option(help: "Tokens, float32 .npy [T, D].")
    var x: String
    @Option(help: "Weights, .safetensors (names above).")
    var weights: String
    @Option(name: .customLong("top-k"), help: "Experts per token (1 ... E).")
    var topK: Int
    @Flag(help: "Divide the top-k probabilities by their sum (Mixtral); default: raw (Switch, Qwen-MoE).")
    var renormalize = false
    @Option(help: "Switch capacity: each expert takes at most ceil(factor · T · k / E) token slots (first choices first, then token order); the rest are dropped. Default: dropless.")
    var capacityFactor: Double?
    @Option(name: [.customShort("o"), .customLong("output")], help: "Output .npy [T, D].")
    var output: String
    @Option(help: "Upstream gradient, float32 .npy [T, D]; needs --dx and --grads.")
    var dout: String?
    @Option(help: "dL/dx output .npy [T, D].")
    var dx: String?
    @Option(help: "Parameter gradients output .safetensors (the weights' names).")
    var grads: String?
    @Option(help: "With --dout: weight of the load-balancing loss E · Σ f_e · P_e in L.")
    var loadBalancingWeight: Float = 0
    @Option(help: "With --dout: weight of the router z-loss mean(logsumexp(x · gateᵀ)²) in L.")
    var zLossWeight: Float = 0
    @Flag(help: "Print the routing statistics (tokens per expert, dropped slots, FLOPs, auxiliary losses) on stdout.")
    var stats = false
    @Option(help: "Worker threads (default: all cores).")
    var threads: Int?

    func validate() throws {
        if topK < 1 { throw ValidationError("--top-k must be at least 1, got \(topK)") }
        if let c = capacityFactor, !(c.isFinite && c > 0) { throw ValidationError("--capacity-factor must be finite and positive, got \(c)") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        if dout != nil && (dx == nil || grads == nil) { throw ValidationError("--dout needs both --dx and --grads") }
        if dout == nil && (dx != nil || grads != nil) { throw ValidationError("--dx and --grads need --dout") }
        if !loadBalancingWeight.isFinite || !zLossWeight.isFinite { throw ValidationError("loss weights must be finite") }
        let outputs = [output, dx, grads].compactMap { $0 }
        if Set(outputs).count != outputs.count { throw ValidationError("output files must differ: \(outputs.joined(separator: ", "))") }
        let inputs = [x, weights, dout].compactMap { $0 }
        if let clash = outputs.first(where: inputs.contains) { throw ValidationError("output \(clash) is also an input") }
    }

    func run() throws {
        let threads = self.threads ?? Parallel.defaultThreads
        let xs = try Numpy.readTensor(x, rank: 2)
        let layer: MixtureOfExperts
        do { layer = try MixtureOfExperts(contentsOf: weights) } catch let e as MoEError { throw MoECommandError("\(weights): \(e)") }
        let config: MoEConfig
        do { config = try layer.config(topK: topK, renormalize: renormalize, capacityFactor: capacityFactor) } catch let e as MoEError {
            throw MoECommandError("\(weights) has \(layer.experts) experts: \(e)")
        }
        guard xs.shape[1] == layer.hidden else {
            throw MoECommandError("\(x): shape \(xs.shape), but the weights have D = \(layer.hidden) (expected [T, \(layer.hidden)])")
        }
        let upstream = try dout.map { try Numpy.readTensor($0, rank: 2) }
        if let upstream, let dout, upstream.shape != xs.shape {
            throw MoECommandError("\(dout): shape \(upstream.shape), expected the output's \(xs.shape)")
        }
        let (out, routing): (Tensor, MoEForward)
        do { (out, routing) = try layer.forward(xs, config: config, keepForBackward: upstream != nil, threads: threads) } catch let e as MoEError {
            throw MoECommandError(e.description.hasPrefix("x ") ? "\(x): \(e)" : "\(e)")
        }
        var files: [(path: String, write: (String) throws -> Void)] = [(output, { try Numpy.write(out, to: $0) })]
        if let upstream, let dx, let grads, let dout {
            let g: MixtureOfExperts.Gradients
            do {
                g = try layer.backward(xs, config: config, forward: routing, outputGradient: upstream,
                                       loadBalancingWeight: loadBalancingWeight, zLossWeight: zLossWeight, threads: threads)
            } catch let e as MoEError { throw MoECommandError("\(dout): \(e)") }
            files.append((dx, { try Numpy.write(g.input, to: $0) }))
            files.append((grads, { try SafeTensors.write(g.namedTensors().sorted { $0.name < $1.name }, to: $0) }))
        }
        try writeAll(files)
        if stats { print(statistics(routing, layer: layer)) }
    }

    /// Writes every file under a temporary name, then renames them all: a failure leaves none.
    func writeAll(_ files: [(path: String, write: (String) throws -> Void)]) throws {
        let temporary = files.map { $0.path + ".moe-partial-\(getpid())" }
        do {
            for (f, t) in zip(files, temporary) { try f.write(t) }
            for (f, t) in zip(files, temporary) where rename(t, f.path) != 0 {
                throw MoECommandError("\(f.path): cannot write: \(String(cString: strerror(errno)))")
            }
        } catch {
            for t in temporary { unlink(t) }
            throw error
        }
    }

    func statistics(_ r: MoEForward, layer: MixtureOfExperts) -> String {
        var s = "tokens: \(r.tokens), experts: \(layer.experts) (sizes \(layer.expertSizes)), top-k: \(r.config.topK)"
        s += r.config.renormalize ? ", renormalised\n" : ", raw weights\n"
        s += "selected per expert: \(r.selectedTokenCounts)\ncomputed per expert: \(r.expertTokenCounts)\n"
        s += "capacity: \(r.capacity.map(String.init) ?? "none (dropless)"), dropped slots: \(r.droppedSlots)\n"
        s += "FLOPs: \(r.flops) (experts \(r.expertFlops), router \(r.routerFlops))\n"
        s += String(format: "load-balancing loss: %.6f, router z-loss: %.6f", r.loadBalancingLoss, r.zLoss)
        return s
    }
}

/// A refusal of `attn moe` with its message (one line).
struct MoECommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
