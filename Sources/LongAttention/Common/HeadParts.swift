import AttentionTensor
import CAttentionKernels

/// The dK/dV rows of a backward's work items. Items are (batch, KV head, part); part 0 writes the
/// KV head's rows of the gradient outputs, later parts (only when `B·Hkv` cannot occupy the cores
/// and a group's query heads are split) private partials that ``reduce(threads:)`` adds to the
/// outputs in a fixed order — so no two threads write the same rows and the sum's order never
/// depends on the thread count. Allocated through the memory budget.
struct HeadPartGradients {
    let parts: Int, M: Int, d: Int, dv: Int, sequences: Int
    let dk: UnsafeMutablePointer<Float>, dv_: UnsafeMutablePointer<Float>
    /// Token-major outputs `[B, M, Hkv, ·]` (this many KV heads per position), or nil: `[B·Hkv, M, ·]`.
    let tokenMajorHeads: Int?
    private let partials: UnsafeMutablePointer<Float>?

    /// `dk [sequences, M, d]`, `dv [sequences, M, dv]` contiguous, with `sequences = B·Hkv`; or,
    /// with `tokenMajorHeads: Hkv`, `dk [B, M, Hkv, d]`, `dv [B, M, Hkv, dv]`.
    init(dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>, sequences: Int, parts: Int, M: Int, d: Int, dvWidth: Int,
         tokenMajorHeads: Int? = nil, purpose: String) throws {
        (self.dk, self.dv_, self.sequences, self.parts, self.M, self.d, self.dv) = (dk, dv, sequences, parts, M, d, dvWidth)
        self.tokenMajorHeads = tokenMajorHeads
        let (floats, overflow) = (sequences * (parts - 1)).multipliedReportingOverflow(by: M * (d + dvWidth))
        guard !overflow else { throw AttentionError.tooLarge(buffer: "\(purpose) dK/dV partials", bytes: nil, limit: nil) }
        try checkBudget(bytes: floats * 4, purpose: "\(purpose) dK/dV partials of \(parts) head parts")
        partials = parts > 1 ? .allocate(capacity: floats) : nil
    }

    func deallocate() { partials?.deallocate() }

    /// Item `(sequence bh, part)`'s dK and dV rows, zeroed, with their row strides.
    func stridedRows(sequence bh: Int, part: Int)
        -> (dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>, ldk: Int, ldv: Int) {
        guard part == 0, let heads = tokenMajorHeads else {
            let (k, v) = rows(sequence: bh, part: part)
            return (k, v, d, dv)
        }
        let row = (bh / heads) * M * heads + bh % heads
        let k = dk + row * d, v = dv_ + row * dv
        for j in 0..<M {
            (k + j * heads * d).update(repeating: 0, count: d)
            (v + j * heads * dv).update(repeating: 0, count: dv)
        }
        return (k, v, heads * d, heads * dv)
    }

    /// Item `(sequence bh, part)`'s dK and dV rows, zeroed (contiguous `[M, ·]`: not for part 0 of
    /// token-major outputs, see ``stridedRows(sequence:part:)``).
    func rows(sequence bh: Int, part: Int) -> (dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>) {
        let k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>
        precondition(part > 0 || tokenMajorHeads == nil, "token-major outputs are strided")
        if part == 0 {
            (k, v) = (dk + bh * M * d, dv_ + bh * M * dv)
        } else {
            k = partials! + (bh * (parts - 1) + part - 1) * M * (d + dv)
            v = k + M * d
        }
        k.update(repeating: 0, count: M * d)
        v.update(repeating: 0, count: M * dv)
        return (k, v)
    }

    /// Adds the partials of parts 1, 2, ... to the outputs.
    func reduce(threads: Int) {
        guard let partials else { return }
        Parallel.run(items: sequences, threads: threads) { _, queue in
            while let bh = queue.next() {
                for part in 1..<parts {
                    let p = partials + (bh * (parts - 1) + part - 1) * M * (d + dv)
                    if let heads = tokenMajorHeads {
                        let row = (bh / heads) * M * heads + bh % heads
                        for j in 0..<M {
                            ak_add(dk + (row + j * heads) * d, p + j * d, d)
                            ak_add(dv_ + (row + j * heads) * dv, p + M * d + j * dv, dv)
                        }
                    } else {
                        ak_add(dk + bh * M * d, p, M * d)
                        ak_add(dv_ + bh * M * dv, p + M * d, M * dv)
                    }
                }
            }
        }
    }
}
