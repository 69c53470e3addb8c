import AttentionTensor
import CAttentionKernels

extension Tensor {
    /// Self when the last axis is contiguous (BLAS can read it with a leading dimension),
    /// otherwise a contiguous copy.
    func lastAxisContiguous() -> Tensor {
        strides.last == 1 || shape.last == 1 ? self : contiguous()
    }

    /// Copies `rows` (`[B, H, n, dv]`) into this `[B, H, N, dv]` tensor at row offset `at`.
    mutating func copyRows(from rows: Tensor, at offset: Int) throws {
        guard rank == 4, rows.rank == 4, rows.shape[0] == shape[0], rows.shape[1] == shape[1],
              rows.shape[3] == shape[3], offset + rows.shape[2] <= shape[2] else {
            throw TensorError.shapeMismatch(operation: "copyRows(at: \(offset))", shapes: [shape, rows.shape],
                                            expected: "rank-4 [B, H, ·, dv] rows that fit after the offset")
        }
        let src = rows.contiguous()
        let (B, H, n, dv, N) = (shape[0], shape[1], rows.shape[2], shape[3], shape[2])
        withUnsafeMutableBufferPointer { dst in
            src.withUnsafePointer { p in
                for bh in 0..<(B * H) {
                    (dst.baseAddress! + (bh * N + offset) * dv).update(from: p + bh * n * dv, count: n * dv)
                }
            }
        }
    }

    /// Adds `rows` (`[B, H, n, w]`) into this `[B, H, N, w]` tensor at row offset `at`.
    mutating func addRows(_ rows: Tensor, at offset: Int) throws {
        guard rank == 4, rows.rank == 4, rows.shape[0] == shape[0], rows.shape[1] == shape[1],
              rows.shape[3] == shape[3], offset + rows.shape[2] <= shape[2] else {
            throw TensorError.shapeMismatch(operation: "addRows(at: \(offset))", shapes: [shape, rows.shape],
                                            expected: "rank-4 [B, H, ·, w] rows that fit after the offset")
        }
        let src = rows.contiguous()
        let (BH, n, w, N) = (shape[0] * shape[1], rows.shape[2], shape[3], shape[2])
        withUnsafeMutableBufferPointer { dst in
            src.withUnsafePointer { p in
                for bh in 0..<BH { ak_add(dst.baseAddress! + (bh * N + offset) * w, p + bh * n * w, n * w) }
            }
        }
    }

    /// Copies `columns` (`[B, H, n]`) into this `[B, H, N]` tensor at column offset `at` (row
    /// log-sum-exps of a range of queries).
    mutating func copyColumns(from columns: Tensor, at offset: Int) throws {
        guard rank == 3, columns.rank == 3, columns.shape[0] == shape[0], columns.shape[1] == shape[1],
              offset + columns.shape[2] <= shape[2] else {
            throw TensorError.shapeMismatch(operation: "copyColumns(at: \(offset))", shapes: [shape, columns.shape],
                                            expected: "rank-3 [B, H, ·] columns that fit after the offset")
        }
        let src = columns.contiguous()
        let (BH, n, N) = (shape[0] * shape[1], columns.shape[2], shape[2])
        withUnsafeMutableBufferPointer { dst in
            src.withUnsafePointer { p in
                for bh in 0..<BH { (dst.baseAddress! + bh * N + offset).update(from: p + bh * n, count: n) }
            }
        }
    }
}

func withOptionalMutablePointer<R>(_ t: inout Tensor?, _ body: (UnsafeMutablePointer<Float>?) throws -> R) rethrows -> R {
    guard t != nil else { return try body(nil) }
    return try t!.withUnsafeMutableBufferPointer { try body($0.baseAddress) }
}
