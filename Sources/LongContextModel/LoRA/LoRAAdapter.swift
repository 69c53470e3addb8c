import AttentionTensor
import Foundation

/// A LoRA adapter (Hu et al. 2021) in PEFT's format: on each targeted projection `W [out, in]`,
/// `W x + s · B A x` with `A [r, in]`, `B [out, r]`, `s = α / r` (rsLoRA: `α / sqrt(r)`). Only A
/// and B train.
///
/// Applied by merging: the model runs with `W' = W + s·B·A`, whose gradient `dW'` the model's
/// backward already computes; the adapter's gradients follow exactly as `dB = s · dW' Aᵀ` and
/// `dA = s · Bᵀ dW'`. Dropout on the adapter's input needs the unmerged form and is not applied:
/// an adapter saved with `lora_dropout` ≠ 0 (PEFT's training default is 0.05) loads, and since
/// PEFT applies no dropout at inference, it computes what PEFT computes there.
///
/// Not `Sendable`: its A and B (``parameters``) are trained in place, unsynchronised. A model it is
/// attached to (``CausalLM/attaching(_:)``) only reads them and may be shared.
public final class LoRAAdapter {
    /// PEFT's `target_modules` names this implementation can adapt (`lm_head`: an untied output layer).
    public static let supportedModules: Set<String> = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                                       "lm_head"]

    public let rank: Int
    public let alpha: Double
    public let useRSLoRA: Bool
    public let targetModules: [String]
    /// A and B of every adapted projection, under PEFT's names
    /// (`base_model.model.<module>.lora_A.weight`, `…lora_B.weight`).
    public let parameters: ParameterSet
    /// The adapted projections' weight names in the base model (`model.layers.0.self_attn.q_proj.weight`).
    public let adaptedWeights: [String]
    /// The layout of the model the adapter was made for (what ``merge(base:into:)`` checks).
    let baseLayout: [ParameterSet.Entry]

    /// Scale `s` of `B A`.
    public var scale: Float { Float(useRSLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank)) }

    static func peftName(_ weight: String, _ ab: String) -> String {
        "base_model.model." + weight.dropLast(".weight".count) + ".lora_\(ab).weight"
    }

    /// A new adapter for `model`: A ~ Kaiming-uniform as PEFT initialises it (bound 1/sqrt(in)),
    /// B = 0, so the adapted model starts equal to the base.
    public init(model: CausalLM, rank: Int, alpha: Double, targetModules: [String], useRSLoRA: Bool = false, seed: UInt64) throws {
        try requireOption(rank >= 1 && rank <= 1 << 16, "LoRA rank", rank, "in 1...65536")
        try requireOption(alpha > 0 && alpha.isFinite, "lora_alpha", alpha, "positive")
        if let bad = targetModules.first(where: { !Self.supportedModules.contains($0) }) {
            throw ModelError.invalidOption(name: "LoRA target module", value: bad, expected: "one of " + Self.supportedModules.sorted().joined(separator: ", "))
        }
        try requireOption(!targetModules.isEmpty, "LoRA target modules", targetModules, "at least one module")
        (self.rank, self.alpha, self.useRSLoRA, self.targetModules) = (rank, alpha, useRSLoRA, targetModules)
        let weights = Self.targets(model, targetModules)
        try requireOption(!weights.isEmpty, "LoRA target modules", targetModules, "modules that match a projection of this model")
        // Every module must adapt something: on a Mixtral, gate/up/down_proj name no weight (its
        // experts' w1/w2/w3 are not adaptable), and a tied model has no lm_head.
        for module in targetModules where Self.targets(model, [module]).isEmpty {
            let why = model.config.architecture == .mixtral && ["gate_proj", "up_proj", "down_proj"].contains(module)
                ? ": a Mixtral's MLPs are experts (w1, w2, w3), which LoRA here does not adapt"
                : module == "lm_head" ? ": the output layer is tied to the embedding" : ""
            throw ModelError.invalidOption(name: "LoRA target module", value: module,
                                           expected: "a module matching a weight of this \(model.config.architecture.rawValue) model\(why)")
        }
        adaptedWeights = weights
        baseLayout = model.parameters.entries
        parameters = try ParameterSet(layout: Self.layout(model, weights, rank))
        var rng = SplitMix64(seed: seed)
        let shapes = Self.weightShapes(model)
        for w in weights {
            let columns = shapes[w]![1], a = parameters.pointer(Self.peftName(w, "A"))
            let bound = 1 / Double(columns).squareRoot()
            for i in 0..<(rank * columns) { a[i] = Float((2 * rng.nextUnitOpen() - 1) * bound) }
        }
    }

    /// Loads PEFT's `adapter_config.json` and `adapter_model.safetensors` from `directory` for `model`.
    public convenience init(directory: String, model: CausalLM) throws {
        guard let data = FileManager.default.contents(atPath: directory + "/adapter_config.json"),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ModelError.invalidCheckpoint(file: directory + "/adapter_config.json", reason: "missing or not a JSON object")
        }
        if let t = o["peft_type"] as? String, t != "LORA" {
            throw ModelError.unsupportedConfig(key: "adapter_config.json: peft_type", value: t, supported: "LORA")
        }
        guard let r = o["r"] as? Int else {
            throw ModelError.invalidConfig(key: "adapter_config.json: r", value: "\(o["r"] ?? "null")", expected: "an integer")
        }
        guard let alpha = (o["lora_alpha"] as? NSNumber)?.doubleValue else {
            throw ModelError.invalidConfig(key: "adapter_config.json: lora_alpha", value: "\(o["lora_alpha"] ?? "null")", expected: "a number")
        }
        guard let modules = o["target_modules"] as? [String] else {
            throw ModelError.invalidConfig(key: "adapter_config.json: target_modules", value: "\(o["target_modules"] ?? "null")", expected: "a list of names")
        }
        for (key, ok) in [("use_dora", (o["use_dora"] as? Bool) != true), ("fan_in_fan_out", (o["fan_in_fan_out"] as? Bool) != true),
                          ("bias", (o["bias"] as? String ?? "none") == "none"),
                          // Read but not applied (see the type's comment): any rate PEFT accepts.
                          ("lora_dropout", o["lora_dropout"].map { v in
                              (v as? NSNumber).map { !isJSONBool(v) && (0..<1).contains($0.doubleValue) } ?? (v is NSNull)
                          } ?? true),
                          ("rank_pattern", (o["rank_pattern"] as? [String: Any] ?? [:]).isEmpty),
                          ("alpha_pattern", (o["alpha_pattern"] as? [String: Any] ?? [:]).isEmpty),
                          ("layers_to_transform", o["layers_to_transform"] == nil || o["layers_to_transform"] is NSNull),
                          ("modules_to_save", o["modules_to_save"] == nil || o["modules_to_save"] is NSNull)] where !ok {
            throw ModelError.unsupportedConfig(key: "adapter_config.json: \(key)", value: "\(o[key] ?? "null")", supported: "PEFT's default")
        }
        try self.init(model: model, rank: r, alpha: alpha, targetModules: modules, useRSLoRA: (o["use_rslora"] as? Bool) ?? false, seed: 0)
        let file = directory + "/adapter_model.safetensors"
        let archive = try SafeTensors.read(file)
        var found = Set<String>()
        for name in archive.names {
            guard let e = parameters.entry(name) else {
                throw ModelError.unexpectedTensor(name: name, file: file)
            }
            guard archive.entry(name)?.shape == e.shape else {
                throw ModelError.misshapenTensor(name: name, shape: archive.entry(name)?.shape ?? [], expected: e.shape, file: file)
            }
            let t = try archive.tensor(name)
            if let i = t.scanValues().invalidIndex { throw ModelError.nonFiniteTensor(name: name, file: file, index: rowMajor(i, t.shape)) }
            try parameters.set(name, t)
            found.insert(name)
        }
        if let missing = parameters.names.first(where: { !found.contains($0) }) {
            throw ModelError.missingTensor(name: missing, shape: parameters.entry(missing)!.shape, file: file)
        }
    }

    /// Writes PEFT's two files into `directory` (each through a temporary name).
    public func save(to directory: String, baseModel: String? = nil) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try SafeTensors.write(parameters.namedTensors(), metadata: ["format": "pt"], to: directory + "/adapter_model.safetensors")
        let config: [String: Any] = [
            "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": targetModules, "lora_dropout": 0.0,
            "bias": "none", "use_rslora": useRSLoRA, "use_dora": false, "fan_in_fan_out": false, "task_type": "CAUSAL_LM",
            "inference_mode": true, "init_lora_weights": true, "base_model_name_or_path": baseModel ?? NSNull(),
            "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](),
        ]
        try writeAtomically(Data((jsonText(config) + "\n").utf8), to: directory + "/adapter_config.json")
    }

    /// Shapes of every weight of `model`, float32 parameters and frozen (quantised) matrices alike.
    static func weightShapes(_ model: CausalLM) -> [String: [Int]] {
        Dictionary(uniqueKeysWithValues: CausalLM.layout(model.config).map { ($0.name, $0.shape) })
    }

    /// The adaptable projections of `model` named by `modules`, in the model's layout order: float32
    /// parameters (which ``merge(base:into:)`` can merge) and frozen matrices of a GGUF file (which only
    /// ``CausalLM/attaching(_:)`` applies, unmerged).
    static func targets(_ model: CausalLM, _ modules: [String]) -> [String] {
        CausalLM.layout(model.config).map(\.name).filter { name in
            modules.contains { name.hasSuffix(".\($0).weight") && (name.contains(".self_attn.") || name.contains(".mlp.")) }
                || (name == "lm_head.weight" && modules.contains("lm_head"))
        }
    }

    static func layout(_ model: CausalLM, _ weights: [String], _ r: Int) -> [(name: String, shape: [Int])] {
        let shapes = weightShapes(model)
        return weights.flatMap { w -> [(name: String, shape: [Int])] in
            let s = shapes[w]!
            return [(peftName(w, "A"), [r, s[1]]), (peftName(w, "B"), [s[0], r])]
        }
    }

    /// `W' = W + s·B·A` for every adapted projection, written into `merged` (a copy of the base's
    /// parameters, or the base's own to merge for inference). Both sets must have the layout of
    /// the model this adapter was made for (same names, shapes and offsets) and this adapter's
    /// parameters its own layout, else ``ModelError/layoutMismatch(what:found:expected:)`` names the first difference.
    public func merge(base: ParameterSet, into merged: ParameterSet) throws {
        try base.checkLayout(baseLayout, "the base parameters of a LoRA merge")
        try merged.checkLayout(baseLayout, "the merged parameters of a LoRA merge")
        if let frozen = adaptedWeights.first(where: { base.entry($0) == nil }) {
            throw ModelError.unsupportedModel(operation: "merging the LoRA adapter into \(frozen)",
                                              requirement: "a float32 weight, not a frozen (quantised) one: apply the adapter unmerged (CausalLM.attaching)")
        }
        for w in adaptedWeights {
            let e = base.entry(w)!, (out, inn) = (e.shape[0], e.shape[1])
            let dst = merged.pointer(w)
            if dst != base.pointer(w) { dst.update(from: base.pointer(w), count: e.count) }
            BLAS.sgemm(.none, .none, m: out, n: inn, k: rank, alpha: scale, a: parameters.pointer(Self.peftName(w, "B")), lda: rank,
                       b: parameters.pointer(Self.peftName(w, "A")), ldb: inn, beta: 1, c: dst, ldc: inn)
        }
    }

    /// The adapter's gradients from the merged weights' gradients `dW'` (in `mergedGradients`),
    /// accumulated into `gradients` (this adapter's layout): `dB += s·dW' Aᵀ`, `dA += s·Bᵀ dW'`.
    /// Both sets' layouts are preconditions (this call does not throw): the merged model's and the adapter's.
    public func gradients(fromMerged mergedGradients: ParameterSet, into gradients: ParameterSet) {
        precondition(mergedGradients.entries == baseLayout, "LoRA gradients: the merged gradients do not have the base model's layout")
        precondition(gradients.entries == parameters.entries, "LoRA gradients: the adapter gradients do not have the adapter's layout")
        for w in adaptedWeights {
            let e = mergedGradients.entry(w)!, (out, inn) = (e.shape[0], e.shape[1])
            let dW = mergedGradients.pointer(w)
            let a = parameters.pointer(Self.peftName(w, "A")), b = parameters.pointer(Self.peftName(w, "B"))
            BLAS.sgemm(.none, .transpose, m: out, n: rank, k: inn, alpha: scale, a: dW, lda: inn, b: a, ldb: inn, beta: 1,
                       c: gradients.pointer(Self.peftName(w, "B")), ldc: rank)
            BLAS.sgemm(.transpose, .none, m: rank, n: inn, k: out, alpha: scale, a: b, lda: rank, b: dW, ldb: inn, beta: 1,
                       c: gradients.pointer(Self.peftName(w, "A")), ldc: inn)
        }
    }

    /// `model` with this adapter merged into a copy of its weights (the base is not changed).
    public func mergedModel(_ model: CausalLM) throws -> CausalLM {
        let merged = try ParameterSet(copying: model.parameters)
        try merge(base: model.parameters, into: merged)
        return try CausalLM(config: model.config, parameters: merged)
    }
}
