import AttentionTensor
import Foundation

/// Checkpoints in Hugging Face's format: a directory with `config.json` and `model.safetensors`
/// (float32, transformers' tensor names), or a sharded `model.safetensors.index.json`.
extension CausalLM {
    /// Loads a checkpoint directory written by transformers' `save_pretrained` or by ``save(to:)``.
    /// Float16, bfloat16 and float64 tensors are converted to float32. Every tensor the config
    /// needs must be present with its shape; unknown tensors are refused by name (rotary tables
    /// some older checkpoints carry, `rotary_emb.inv_freq`, and an untied-looking `lm_head.weight`
    /// in a tied model are ignored, as transformers does).
    public convenience init(directory: String) throws {
        let config = try ModelConfig(contentsOf: directory + "/config.json")
        let layout = Self.layout(config)
        let p = try ParameterSet(layout: layout)
        let fm = FileManager.default
        var archives = [SafeTensorsArchive]()
        let single = directory + "/model.safetensors", index = directory + "/model.safetensors.index.json"
        if fm.fileExists(atPath: single) {
            archives = [try SafeTensors.read(single)]
        } else if let data = fm.contents(atPath: index) {
            guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let map = o["weight_map"] as? [String: String] else {
                throw ModelError.invalidCheckpoint(file: index, reason: "no weight_map")
            }
            for file in Set(map.values).sorted() {
                guard !file.contains("/"), file.hasSuffix(".safetensors") else {
                    throw ModelError.invalidCheckpoint(file: index, reason: "names a shard outside the directory: \(file)")
                }
                archives.append(try SafeTensors.read(directory + "/" + file))
            }
        } else {
            throw ModelError.invalidCheckpoint(file: directory, reason: "neither model.safetensors nor model.safetensors.index.json")
        }
        var found = Set<String>()
        for archive in archives {
            for name in archive.names {
                if p.entry(name) == nil {
                    if name.hasSuffix("rotary_emb.inv_freq") || (name == "lm_head.weight" && config.tieWordEmbeddings) { continue }
                    throw ModelError.unexpectedTensor(name: name, file: archive.path)
                }
                guard found.insert(name).inserted else { throw ModelError.invalidCheckpoint(file: archive.path, reason: "tensor \(name) appears in two shards") }
                guard let e = archive.entry(name), e.shape == p.entry(name)!.shape else {
                    throw ModelError.misshapenTensor(name: name, shape: archive.entry(name)?.shape ?? [], expected: p.entry(name)!.shape,
                                                     file: archive.path)
                }
                let t = try archive.tensor(name)
                if let i = t.scanValues().invalidIndex {
                    throw ModelError.nonFiniteTensor(name: name, file: archive.path, index: rowMajor(i, t.shape))
                }
                try p.set(name, t)
            }
        }
        if let missing = layout.first(where: { !found.contains($0.name) }) {
            throw ModelError.missingTensor(name: missing.name, shape: missing.shape, file: directory)
        }
        try self.init(config: config, parameters: p)
    }

    /// Writes `config.json` and `model.safetensors` into `directory` (created if needed), each to a
    /// temporary name first and renamed, so a reader never sees half a checkpoint file.
    public func save(to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try SafeTensors.write(parameters.namedTensors(), metadata: ["format": "pt"], to: directory + "/model.safetensors")
        try writeAtomically(try config.jsonData(), to: directory + "/config.json")
    }
}

/// Writes `data` to `path` through a temporary file in the same directory, fsync'd and renamed
/// (``AtomicFile/write(_:to:)``, the writer of the `.safetensors` files too).
func writeAtomically(_ data: Data, to path: String) throws {
    try AtomicFile.write(data, to: path)
}

extension CausalLM {
    /// `set` (this model's layout: weights or their gradients) under the names and shapes the
    /// parameters have inside transformers 5 once loaded. They equal the on-disk names except for
    /// Mixtral's experts, which transformers fuses per layer: `mlp.gate.weight [E, D]` (the
    /// router), `mlp.experts.gate_up_proj [E, 2F, D]` (each expert's w1 then w3) and
    /// `mlp.experts.down_proj [E, D, F]` (w2). Heterogeneous experts have no such layout and keep
    /// their on-disk names.
    public func transformersParameterLayout(_ set: ParameterSet) throws -> [(name: String, tensor: Tensor)] {
        guard config.architecture == .mixtral, config.expertSizes.map({ Set($0).count == 1 }) ?? true else {
            return try set.namedTensors()
        }
        let (E, D, F) = (config.experts, config.hiddenSize, config.expertSize(0))
        var out = [(name: String, tensor: Tensor)]()
        for e in set.entries where !e.name.contains(".block_sparse_moe.") { out.append((e.name, try set.tensor(e.name))) }
        for layer in 0..<config.layers {
            let p = "model.layers.\(layer).block_sparse_moe.", q = "model.layers.\(layer).mlp."
            out.append((q + "gate.weight", try set.tensor(p + "gate.weight")))
            var gateUp = [Float](), down = [Float]()
            gateUp.reserveCapacity(E * 2 * F * D)
            down.reserveCapacity(E * D * F)
            for x in 0..<E {
                gateUp += try set.tensor(p + "experts.\(x).w1.weight").scalars
                gateUp += try set.tensor(p + "experts.\(x).w3.weight").scalars
                down += try set.tensor(p + "experts.\(x).w2.weight").scalars
            }
            out.append((q + "experts.gate_up_proj", try Tensor(shape: [E, 2 * F, D], scalars: gateUp)))
            out.append((q + "experts.down_proj", try Tensor(shape: [E, D, F], scalars: down)))
        }
        return out
    }
}
