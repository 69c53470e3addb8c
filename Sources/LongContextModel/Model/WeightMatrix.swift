import AttentionTensor
import Foundation

/// A weight matrix `W [out, in]` as the model multiplies by it (`y = x · Wᵀ`, transformers'
/// Linear): float32 rows in memory (a trainable parameter, or a GGUF F32 tensor mapped in place),
/// or rows stored in a block format (a GGUF tensor of ggml's quantisation types) that are
/// dequantised a panel of rows at a time into scratch, never as a whole float32 copy.
public enum WeightMatrix: @unchecked Sendable {
    case dense(UnsafePointer<Float>)
    case blocks(BlockRows)
}

/// Rows of a matrix `[rows, columns]` held in another format, with the function that writes rows
/// `r ..< r + n` as float32 into `[n, columns]` (the source keeps its memory alive).
public struct BlockRows: Sendable {
    public let rows: Int, columns: Int
    /// Writes rows `range` into `destination` (`range.count × columns` floats), bit for bit as the
    /// format's reference dequantisation.
    public let dequantize: @Sendable (_ range: Range<Int>, _ destination: UnsafeMutablePointer<Float>) -> Void
    /// Bytes the stored rows occupy.
    public let bytes: Int

    public init(rows: Int, columns: Int, bytes: Int,
                dequantize: @escaping @Sendable (_ range: Range<Int>, _ destination: UnsafeMutablePointer<Float>) -> Void) {
        (self.rows, self.columns, self.bytes, self.dequantize) = (rows, columns, bytes, dequantize)
    }
}

/// Rows of a panel: enough output rows per dequantised panel that each sgemm call is large,
/// few enough that a thread's panel (≤ 1 MiB) stays in L2.
@inline(__always)
func panelRows(columns k: Int) -> Int { max(16, min(512, (1 << 18) / max(1, k))) }

/// `y [rows, out] (+)= x [rows, in] · Wᵀ`. Dense weights go straight to BLAS; block weights are
/// dequantised panel by panel (threads split the panels, each with one scratch panel allocated
/// once per call) and each panel multiplied by one sgemm (or sgemv for one or two rows).
func project(_ x: UnsafePointer<Float>, _ w: WeightMatrix, _ y: UnsafeMutablePointer<Float>, rows: Int, in k: Int, out n: Int,
             accumulate: Bool = false, threads: Int = Parallel.defaultThreads) {
    switch w {
    case .dense(let p):
        project(x, p, y, rows: rows, in: k, out: n, accumulate: accumulate)
    case .blocks(let b):
        precondition(b.rows == n && b.columns == k, "weight [\(b.rows), \(b.columns)] used as [\(n), \(k)]")
        let P = panelRows(columns: k), panels = (n + P - 1) / P
        let workers = max(1, min(threads, panels))
        Parallel.run(items: panels, threads: workers) { _, queue in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: P * k)
            defer { scratch.deallocate() }
            while let p = queue.next() {
                let r0 = p * P, r1 = min(n, r0 + P)
                b.dequantize(r0..<r1, scratch)
                if rows <= 2 {
                    for r in 0..<rows {
                        BLAS.sgemv(.none, m: r1 - r0, n: k, a: scratch, lda: k, x: x + r * k, beta: accumulate ? 1 : 0, y: y + r * n + r0)
                    }
                } else {
                    BLAS.sgemm(.none, .transpose, m: rows, n: r1 - r0, k: k, a: x, lda: k, b: scratch, ldb: k,
                               beta: accumulate ? 1 : 0, c: y + r0, ldc: n)
                }
            }
        }
    }
}

/// `dx [rows, in] (+)= dy [rows, out] · W` for a weight that takes no gradient (frozen: a
/// quantised base model under LoRA), panel by panel: panel rows `r0 ..< r1` contribute
/// `dy[:, r0..<r1] · W[r0..<r1, :]`, summed in panel order (one thread, so the sum's order is fixed).
func projectInputGradient(_ w: WeightMatrix, _ dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows: Int, in k: Int,
                          out n: Int, accumulate: Bool) {
    switch w {
    case .dense(let p):
        BLAS.sgemm(.none, .none, m: rows, n: k, k: n, a: dy, lda: n, b: p, ldb: k, beta: accumulate ? 1 : 0, c: dx, ldc: k)
    case .blocks(let b):
        let P = panelRows(columns: k)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: P * k)
        defer { scratch.deallocate() }
        var first = !accumulate
        for r0 in stride(from: 0, to: n, by: P) {
            let r1 = min(n, r0 + P)
            b.dequantize(r0..<r1, scratch)
            BLAS.sgemm(.none, .none, m: rows, n: k, k: r1 - r0, a: dy + r0, lda: n, b: scratch, ldb: k, beta: first ? 0 : 1, c: dx, ldc: k)
            first = false
        }
    }
}

extension WeightMatrix {
    /// Row `r` (`columns` floats) into `destination`: an embedding lookup.
    func row(_ r: Int, columns: Int, into destination: UnsafeMutablePointer<Float>) {
        switch self {
        case .dense(let p): destination.update(from: p + r * columns, count: columns)
        case .blocks(let b): b.dequantize(r..<(r + 1), destination)
        }
    }
}
