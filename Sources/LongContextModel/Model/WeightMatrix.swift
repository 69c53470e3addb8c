import AttentionTensor
import CAttentionKernels
import Foundation

/// How a model multiplies by weights stored in a block format.
///
/// - `exact`: the reference: rows dequantised a panel at a time by ggml's rules, float32
///   products (sgemv/sgemm). Logits match float64 transformers to about 4e-6.
/// - `fast`: for up to ``WeightMatrix/fastRowLimit`` activation rows (decoding), the activation
///   rows are quantised to 8-bit blocks and multiplied against the stored blocks with integer dot
///   products (``QuantizedMatrix``, `ak_qdot`); more rows (prefill) take the exact path.
public enum MatmulMode: String, Sendable, CaseIterable, Codable {
    case exact, fast
}

/// A weight matrix `W [out, in]` as the model multiplies by it (`y = x · Wᵀ`, transformers'
/// Linear): float32 rows in memory (a trainable parameter, or a GGUF F32 tensor mapped in place),
/// or rows stored in a block format (a GGUF tensor of ggml's quantisation types) that are
/// dequantised a panel of rows at a time into scratch, never as a whole float32 copy.
///
/// `@unchecked Sendable`: the pointers are into memory nobody writes while a model shares them (a
/// read-only file mapping, or parameters that change only in training; see ``CausalLM``).
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
    /// The stored blocks, when the quantised kernels can read them in place (``MatmulMode/fast``).
    public let quantized: QuantizedMatrix?

    public init(rows: Int, columns: Int, bytes: Int, quantized: QuantizedMatrix? = nil,
                dequantize: @escaping @Sendable (_ range: Range<Int>, _ destination: UnsafeMutablePointer<Float>) -> Void) {
        (self.rows, self.columns, self.bytes, self.dequantize) = (rows, columns, bytes, dequantize)
        self.quantized = quantized
    }
}

/// A matrix `W [rows, columns]` stored in one of ggml's types, `rows` rows of `rowBytes` bytes
/// from `base` (memory the owner keeps alive, such as a mapped GGUF file), that the kernels of
/// `QuantDot.h` read in place: q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, q6_K, f16, bf16, f32.
///
/// `rowOrder`, when given, says that row `r` of the matrix the model uses is stored row
/// `rowOrder[r]` (llama's Q and K, which llama.cpp's converter permuted): products are computed
/// in stored order and the outputs gathered through the map.
///
/// `@unchecked Sendable`: `base` points into a read-only mapping its owner keeps alive.
public struct QuantizedMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let base: UnsafeRawPointer
    public let rows: Int, columns: Int, rowBytes: Int
    public let rowOrder: [Int]?

    /// Nil when the kernels do not take `type` or `columns` are not whole blocks of it.
    public init?(type: GGMLType, base: UnsafeRawPointer, rows: Int, columns: Int, rowOrder: [Int]? = nil) {
        guard ak_qdot_supports(Int32(type.rawValue), columns) == 1, let rb = type.byteCount(elements: columns) else { return nil }
        precondition(rowOrder.map { $0.count == rows } ?? true, "row order of \(rowOrder!.count) for \(rows) rows")
        (self.type, self.base, self.rows, self.columns, self.rowBytes, self.rowOrder) = (type, base, rows, columns, rb, rowOrder)
    }

    /// Output rows per work item of a matrix of `rows` rows shared by `threads` workers: about
    /// four items per worker (enough for the dynamic queue to even out a late or slow worker), in
    /// multiples of 64 rows (a multiple of 16 floats, so that threads never write the same 64-byte
    /// line of a 64-byte-aligned `y`), from 64 to 512 rows.
    ///
    /// Larger items are faster: each is one sequential run of blocks, which the hardware
    /// prefetchers follow, where 64-row items interleaved between two workers break every thread's
    /// stream every 23 KB (SmolLM2's 576 columns of Q4_1), and each item costs an atomic on a
    /// line both cores write. Measured on Zen 3, SmolLM2-shaped weights (96 MB a token) on 2
    /// threads: 17.3-18.9 GB/s with 64-row items, 19.3-19.9 GB/s with these. Each row is one
    /// kernel call's row whatever the items are, so the results do not depend on them.
    static func chunkRows(rows: Int, threads: Int) -> Int {
        let share = (rows + 4 * max(1, threads) - 1) / (4 * max(1, threads))
        return min(512, max(64, (share + 63) / 64 * 64))
    }

    /// The types of 32-element blocks (the others: K-quants of 256, and float rows).
    public static let blocks32: Set<GGMLType> = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0]

    /// `y [n, rows] (+)= x [n, columns] · Wᵀ` for `1 ≤ n ≤ 16`: `x`'s rows quantised once, the
    /// weight rows split across `threads` in chunks of ``chunkRows(rows:threads:)``. Each output is
    /// computed by the same operations whatever `n` and `threads` are (bitwise the same results).
    /// A group of one (``multiply(_:_:rows:accumulate:threads:)-swift.type.method``).
    public func multiply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows n: Int, accumulate: Bool = false,
                         threads: Int = Parallel.defaultThreads) {
        Self.multiply([(matrix: self, y: y)], x, rows: n, accumulate: accumulate, threads: threads)
    }
}

/// Rows of a panel: enough output rows per dequantised panel that each sgemm call is large,
/// few enough that a thread's panel (≤ 1 MiB) stays in L2.
@inline(__always)
func panelRows(columns k: Int) -> Int { max(16, min(512, (1 << 18) / max(1, k))) }

/// Panels of `rows` weight rows for `threads` workers: as many as ``panelRows(columns:)`` needs,
/// rounded up to a multiple of `threads` so every worker gets the same share (Gemma 3's k/v
/// projections, 256 rows, were one panel: one worker did them while the other waited; its q
/// projection was 3 panels, 2 + 1), each a multiple of 8 rows (whole sgemm register tiles).
func panelPlan(rows n: Int, columns k: Int, threads: Int) -> (rows: Int, panels: Int) {
    let most = panelRows(columns: k), t = max(1, threads)
    var panels = (n + most - 1) / most
    if t > 1 { panels = min((panels + t - 1) / t * t, max(1, n / 16)) }
    let P = min(n, ((n + panels - 1) / panels + 7) / 8 * 8)
    return (max(1, P), (n + max(1, P) - 1) / max(1, P))
}

extension WeightMatrix {
    /// The most activation rows ``MatmulMode/fast`` sends to the quantised kernels.
    public static let fastRowLimit = Int(AK_QDOT_MAX_ROWS)
}

/// `y [rows, out] (+)= x [rows, in] · Wᵀ`. Dense weights go straight to BLAS; block weights are
/// dequantised panel by panel (threads split the panels, each with one scratch panel allocated
/// once per call) and each panel multiplied by one sgemm (or, for up to 16 rows, one sgemv per
/// row: each row's result independent of the others, as a batched decoding step needs). With
/// `matmul` `.fast`, up to 16 rows against quantised blocks take ``QuantizedMatrix/multiply``.
func project(_ x: UnsafePointer<Float>, _ w: WeightMatrix, _ y: UnsafeMutablePointer<Float>, rows: Int, in k: Int, out n: Int,
             accumulate: Bool = false, threads: Int = Parallel.defaultThreads, matmul: MatmulMode = .exact) {
    switch w {
    case .dense(let p):
        project(x, p, y, rows: rows, in: k, out: n, accumulate: accumulate)
    case .blocks(let b):
        precondition(b.rows == n && b.columns == k, "weight [\(b.rows), \(b.columns)] used as [\(n), \(k)]")
        if matmul == .fast, rows >= 1, rows <= WeightMatrix.fastRowLimit, let q = b.quantized {
            q.multiply(x, y, rows: rows, accumulate: accumulate, threads: threads)
            return
        }
        let (P, panels) = panelPlan(rows: n, columns: k, threads: threads)
        let workers = max(1, min(threads, panels))
        Parallel.run(items: panels, threads: workers) { _, queue in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: P * k)
            defer { scratch.deallocate() }
            while let p = queue.next() {
                let r0 = p * P, r1 = min(n, r0 + P)
                b.dequantize(r0..<r1, scratch)
                if rows <= gemvRowLimit {
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

extension QuantizedMatrix {
    /// `y_i [n, rows_i] (+)= x [n, columns] · W_iᵀ` for several matrices with the same columns
    /// (a decoder layer's q/k/v or gate/up; one matrix is a group of one): `x` quantised once per
    /// activation format, and every matrix's row chunks (``chunkRows(rows:threads:)``) shared out in
    /// one parallel region, so a small matrix (SmolLM2's k and v, 69 KB each, below the threshold
    /// for a second worker) does not run alone on one core while the other waits, and the region's
    /// start costs once. Every output row is one kernel call's row on its matrix's bytes, whatever
    /// the group, the items and the threads: the same bits (a matrix with a ``rowOrder`` writes its
    /// rows in stored order to scratch, then they are gathered into its `y`).
    static func multiply(_ parts: [(matrix: QuantizedMatrix, y: UnsafeMutablePointer<Float>)], _ x: UnsafePointer<Float>,
                         rows n: Int, accumulate: Bool = false, threads: Int = Parallel.defaultThreads) {
        precondition(n >= 1 && n <= WeightMatrix.fastRowLimit, "\(n) rows: the quantised kernels take 1...\(WeightMatrix.fastRowLimit)")
        precondition(parts.allSatisfy { $0.matrix.columns == parts[0].matrix.columns }, "a group of quantised matrices shares its columns")
        guard let k = parts.first?.matrix.columns else { return }
        // One quantised copy of x per activation format (ak_qdot_activation_format: float rows,
        // the 32-element types' blocks, the K-quants' superblocks), and per part what its items need: no lookup inside the region.
        struct Part { let type: Int32, base: UnsafeRawPointer, rows: Int, rowBytes: Int, perCall: Int, chunk: Int
                      var activation = 0, activationBytes = 0, quantizes = false, firstItem = 0, accumulate: Int32 = 0 }
        var total = 0, work = 0
        for p in parts { work += p.matrix.rowBytes * p.matrix.rows * n }
        // A small product is not worth a second worker: the work is the stored bytes times the
        // activation rows (a batched step's 8 rows through a 200 KB matrix are worth splitting).
        // The pool starts a worker in a few microseconds, about what 128 KiB of blocks take on
        // one core. The threads never change the results.
        let split = work >= (1 << 17) && threads > 1
        var plan = [Part]()
        plan.reserveCapacity(parts.count)
        var items = 0
        for p in parts {
            let q = p.matrix, t = Int32(q.type.rawValue)
            // The 32-block types take the activation rows 4 at a time: measured on [1536, 576] q4_1
            // and q8_0, 8 rows in one call cost 20-35% more per row than two calls of 4 (each row's
            // result is the same in any call: the kernels are batch-invariant).
            var part = Part(type: t, base: q.base, rows: q.rows, rowBytes: q.rowBytes, perCall: Self.blocks32.contains(q.type) ? 4 : n,
                            chunk: Self.chunkRows(rows: q.rows, threads: split ? threads : 1))
            if let same = plan.first(where: { $0.quantizes && ak_qdot_activation_format($0.type) == ak_qdot_activation_format(t) }) {
                (part.activation, part.activationBytes) = (same.activation, same.activationBytes)
            } else {
                (part.activation, part.activationBytes, part.quantizes) = (total, ak_qdot_activation_bytes(t, k), true)
                total += (part.activationBytes * n + 63) / 64 * 64
            }
            part.firstItem = items
            part.accumulate = accumulate && q.rowOrder == nil ? 1 : 0
            items += (q.rows + part.chunk - 1) / part.chunk
            plan.append(part)
        }
        let act = UnsafeMutableRawPointer.allocate(byteCount: max(1, total), alignment: 64)
        defer { act.deallocate() }
        for part in plan where part.quantizes { ak_qdot_quantize(part.type, x, k, n, k, act + part.activation) }
        let workers = split ? max(1, min(threads, items)) : 1
        nonisolated(unsafe) let a = UnsafeRawPointer(act)
        // A matrix with a row order writes its rows in stored order to scratch, then gathers them.
        let scratch = parts.map { $0.matrix.rowOrder == nil ? nil : UnsafeMutablePointer<Float>.allocate(capacity: n * $0.matrix.rows) }
        defer { scratch.forEach { $0?.deallocate() } }
        nonisolated(unsafe) let outputs = zip(parts, scratch).map { $0.1 ?? $0.0.y }
        nonisolated(unsafe) let table = plan
        Parallel.run(items: items, threads: workers) { _, queue in
            while let c = queue.next() {
                // Items are numbered part by part: the part is the last whose first item is ≤ c.
                var i = table.count - 1
                while table[i].firstItem > c { i -= 1 }
                let q = table[i], r0 = (c - q.firstItem) * q.chunk, r1 = min(q.rows, r0 + q.chunk)
                var g = 0
                while g < n {
                    let rows = min(q.perCall, n - g)
                    ak_qdot(q.type, q.base + r0 * q.rowBytes, q.rowBytes, r1 - r0, k, a + q.activation + g * q.activationBytes, rows,
                            outputs[i] + g * q.rows + r0, q.rows, q.accumulate)
                    g += rows
                }
            }
        }
        for (i, p) in parts.enumerated() {
            guard let src0 = scratch[i], let order = p.matrix.rowOrder else { continue }
            let m = p.matrix.rows
            for r in 0..<n {
                let src = src0 + r * m, dst = p.y + r * m
                if accumulate { for j in 0..<m { dst[j] += src[order[j]] } } else { for j in 0..<m { dst[j] = src[order[j]] } }
            }
        }
    }
}
