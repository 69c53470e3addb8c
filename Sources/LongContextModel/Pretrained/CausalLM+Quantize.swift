import AttentionTensor
import Foundation

/// The blocks of a model quantised at load (``CausalLM/quantizing(to:)``), and whatever kept the
/// original model's frozen matrices alive. `@unchecked Sendable`: the bytes are written once,
/// before the model that reads them exists, and only read after.
final class QuantizedWeights: @unchecked Sendable {
    let bytes: UnsafeMutableRawPointer
    let previous: (any Sendable)?
    init(byteCount: Int, previous: (any Sendable)?) {
        bytes = UnsafeMutableRawPointer.allocate(byteCount: max(1, byteCount), alignment: 64)
        self.previous = previous
    }
    deinit { bytes.deallocate() }
}

extension CausalLM {
    /// This model with its float32 weight matrices quantised to `type` (`.q8_0` or `.q4_0`) by
    /// ggml's reference rules (``GGMLType/quantize(_:count:into:)``, what llama.cpp's quantizer
    /// writes), held as frozen block matrices, so that a Hugging Face folder in bf16/f16/f32 gets
    /// the quantised kernels of ``MatmulMode/fast`` (`attn … --quantize q8_0|q4_0`).
    ///
    /// Every 2-D parameter `[out, in]` is quantised, except that under `.q4_0` the token embedding
    /// and the LM head become `.q8_0` (as llama.cpp's quantizer keeps its output matrix above 4
    /// bits: 4-bit steps there cost the most quality); matrices already frozen (a GGUF file's)
    /// stay as they are; vectors (norms) stay float32. The float32 matrices are released when the
    /// original model is. Mixture-of-experts models are refused (their experts are read as
    /// parameters).
    public func quantizing(to type: GGMLType) throws -> CausalLM {
        guard type.isQuantizable else { throw GGUFError.notQuantizable(type: type) }
        guard config.experts <= 1 else {
            throw ModelError.unsupportedModel(operation: "quantisation", requirement: "dense MLPs (a mixture of experts' experts are float32 parameters)")
        }
        let head = headName, embedding = "model.embed_tokens.weight"
        var plan = [(entry: ParameterSet.Entry, type: GGMLType, offset: Int)]()
        var vectors = [(name: String, shape: [Int])]()
        var total = 0
        for e in parameters.entries {
            let target = type == .q4_0 && (e.name == head || e.name == embedding) ? GGMLType.q8_0 : type
            guard e.shape.count == 2, e.shape[1] % target.blockSize == 0,
                  let rowBytes = target.byteCount(elements: e.shape[1]) else {
                vectors.append((e.name, e.shape))
                continue
            }
            let (bytes, o1) = rowBytes.multipliedReportingOverflow(by: e.shape[0])
            let (next, o2) = total.addingReportingOverflow((bytes + 63) / 64 * 64)
            guard !o1, !o2 else { throw ModelError.tooLarge(quantity: "the quantised bytes of \(e.name) \(e.shape)", value: nil, limit: Int.max) }
            plan.append((e, target, total))
            total = next
        }
        let store = QuantizedWeights(byteCount: total, previous: storage)
        var frozen = self.frozen
        for (e, target, offset) in plan {
            let (rows, columns) = (e.shape[0], e.shape[1])
            let src = parameters.pointer(e.name)
            guard (0..<(rows * columns)).allSatisfy({ src[$0].isFinite }) else {
                throw ModelError.nonFiniteTensor(name: e.name, file: nil, index: (0..<(rows * columns)).first { !src[$0].isFinite })
            }
            let base = store.bytes + offset, rowBytes = target.byteCount(elements: columns)!
            try target.quantize(src, count: rows * columns, into: base)
            nonisolated(unsafe) let blocks = UnsafeRawPointer(base)
            let quantized = QuantizedMatrix(type: target, base: blocks, rows: rows, columns: columns)
            frozen[e.name] = .blocks(BlockRows(rows: rows, columns: columns, bytes: rowBytes * rows, quantized: quantized) { range, out in
                try! target.dequantize(blocks + range.lowerBound * rowBytes, count: range.count * columns, into: out)
            })
        }
        let kept = try ParameterSet(layout: vectors)
        for (name, shape) in vectors {
            kept.pointer(name).update(from: parameters.pointer(name), count: shape.reduce(1, *))
        }
        return try CausalLM(config: config, parameters: kept, frozen: frozen, storage: store, matmul: matmul)
    }
}
