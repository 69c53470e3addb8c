import AttentionTensor
import Foundation

/// A LoRA adapter applied unmerged: each adapted projection computes `x·Wᵀ + s·(x·Aᵀ)·Bᵀ`, where
/// `W` stays as the model holds it (a quantised GGUF matrix dequantised panel by panel, never a
/// float32 copy of the whole matrix; or float32 rows). What LoRA on a quantised base needs (QLoRA's
/// arrangement), where ``LoRAAdapter/merge(base:into:)`` cannot write `W + s·B·A`.
///
/// The backward of an adapted projection, from `dy = dL/dy`:
///
///     u = dy·B                   [rows, r]
///     dx += dy·W + s·u·A         (the base's part through the dequantised panels)
///     dA += s·uᵀ·x,  dB += s·dyᵀ·(x·Aᵀ)
///
/// Gradients accumulate (+=) into ``gradients`` (the adapter's layout) whenever the model's
/// backward runs; the caller zeroes them between steps. One training step at a time per model:
/// the accumulation is not synchronised.
///
/// Not `Sendable`: ``gradients`` accumulate without synchronisation in every backward. The model
/// holding it (``CausalLM``, shared read-only) reads only A and B in its forward.
public final class AttachedLoRA {
    public let adapter: LoRAAdapter
    /// dL/dA and dL/dB of every adapted projection, under PEFT's names.
    public let gradients: ParameterSet

    struct Slot {
        let a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>
        let da: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>
    }
    let slots: [String: Slot]
    let rank: Int, scale: Float

    init(adapter: LoRAAdapter) throws {
        self.adapter = adapter
        gradients = try ParameterSet(zerosLike: adapter.parameters)
        var s = [String: Slot]()
        for w in adapter.adaptedWeights {
            let a = LoRAAdapter.peftName(w, "A"), b = LoRAAdapter.peftName(w, "B")
            s[w] = Slot(a: adapter.parameters.pointer(a), b: adapter.parameters.pointer(b), da: gradients.pointer(a),
                        db: gradients.pointer(b))
        }
        slots = s
        (rank, scale) = (adapter.rank, adapter.scale)
    }

    /// `y [rows, out] += s·(x·Aᵀ)·Bᵀ` when `weight` is adapted.
    ///
    /// Up to ``gemvRowLimit`` rows (a decoding step, a batched one of several sequences, a short
    /// prompt chunk) are computed row by row, two GEMVs each (`t = A·x`, `y += s·B·t`), as
    /// ``project`` does the base product: a row's bits are then the same whatever other rows share
    /// the call. OpenBLAS's sgemm picks kernels and blocking by the row count, so one row of an
    /// 8-row sgemm can differ in the last bits from the same row alone, and a batched decoding
    /// step (``CausalLM/step(tokens:caches:threads:)``) would no longer be batch-invariant. `t`
    /// (r floats) lives on the stack for these. More rows (prefill chunks) take two sgemm calls; a
    /// sequence's chunks are the same whether it runs alone or beside others.
    func addProduct(_ weight: String, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, in k: Int, out n: Int) {
        guard let s = slots[weight], rows > 0 else { return }
        let r = rank
        if rows <= gemvRowLimit {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: r) { buffer in
                let t = buffer.baseAddress!
                for i in 0..<rows {
                    BLAS.sgemv(.none, m: r, n: k, a: s.a, lda: k, x: x + i * k, beta: 0, y: t)
                    BLAS.sgemv(.none, m: n, n: r, alpha: scale, a: s.b, lda: r, x: t, beta: 1, y: y + i * n)
                }
            }
            return
        }
        let t = UnsafeMutablePointer<Float>.allocate(capacity: rows * r)
        defer { t.deallocate() }
        BLAS.sgemm(.none, .transpose, m: rows, n: r, k: k, a: x, lda: k, b: s.a, ldb: k, beta: 0, c: t, ldc: r)
        BLAS.sgemm(.none, .transpose, m: rows, n: n, k: r, alpha: scale, a: t, lda: r, b: s.b, ldb: r, beta: 1, c: y, ldc: n)
    }

    /// The adapter's part of the backward of `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` (the base's `dy·W` is already in `dx`).
    func backward(_ weight: String, _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?,
                  rows: Int, in k: Int, out n: Int) {
        guard let s = slots[weight], rows > 0 else { return }
        let r = rank
        let u = UnsafeMutablePointer<Float>.allocate(capacity: rows * r), t = UnsafeMutablePointer<Float>.allocate(capacity: rows * r)
        defer { u.deallocate(); t.deallocate() }
        BLAS.sgemm(.none, .none, m: rows, n: r, k: n, a: dy, lda: n, b: s.b, ldb: r, beta: 0, c: u, ldc: r)
        if let dx {
            BLAS.sgemm(.none, .none, m: rows, n: k, k: r, alpha: scale, a: u, lda: r, b: s.a, ldb: k, beta: 1, c: dx, ldc: k)
        }
        BLAS.sgemm(.transpose, .none, m: r, n: k, k: rows, alpha: scale, a: u, lda: r, b: x, ldb: k, beta: 1, c: s.da, ldc: k)
        BLAS.sgemm(.none, .transpose, m: rows, n: r, k: k, a: x, lda: k, b: s.a, ldb: k, beta: 0, c: t, ldc: r)
        BLAS.sgemm(.transpose, .none, m: n, n: r, k: rows, alpha: scale, a: dy, lda: n, b: t, ldb: r, beta: 1, c: s.db, ldc: r)
    }
}

extension CausalLM {
    /// This model's weights (shared, not copied) with `adapter` applied unmerged (``AttachedLoRA``):
    /// the way to put LoRA on a GGUF model, whose projections are frozen quantised matrices. The
    /// adapter must have been made for this model (``LoRAAdapter/init(model:rank:alpha:targetModules:useRSLoRA:seed:)``).
    /// Training reads ``lora``'s gradients after ``loss(tokens:batch:length:targets:gradients:gradientScale:keepLogits:routerAuxLoss:threads:)``
    /// with `gradients` a zeroed set in this model's layout (the float32 vectors' gradients, unused here).
    public func attaching(_ adapter: LoRAAdapter) throws -> CausalLM {
        guard adapter.baseLayout == parameters.entries else {
            throw ModelError.layoutMismatch(what: "the LoRA adapter", found: "a base layout of \(adapter.baseLayout.count) entries",
                                            expected: "this model's \(parameters.entries.count) entries")
        }
        let names = Set(Self.layout(config).map(\.name))
        if let stray = adapter.adaptedWeights.first(where: { !names.contains($0) }) {
            throw ModelError.unexpectedTensor(name: stray, file: nil)
        }
        let m = try CausalLM(config: config, parameters: parameters, frozen: frozen, storage: storage, matmul: matmul)
        m.lora = try AttachedLoRA(adapter: adapter)
        return m
    }

    /// `y (+)= x·W(name)ᵀ`, plus the attached adapter's product when it adapts `name`.
    func projectWeight(_ x: UnsafePointer<Float>, _ name: String, _ y: UnsafeMutablePointer<Float>, rows: Int, in k: Int, out n: Int,
                       accumulate: Bool = false, threads: Int) {
        project(x, matrix(name), y, rows: rows, in: k, out: n, accumulate: accumulate, threads: threads, matmul: matmul)
        lora?.addProduct(name, x, y, rows: rows, in: k, out: n)
    }
}
