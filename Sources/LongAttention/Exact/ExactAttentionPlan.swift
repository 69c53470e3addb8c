import AttentionTensor

/// How exact attention is computed. Both give the same result to float32 rounding.
public enum ExactAttentionImplementation: String, Sendable, CaseIterable {
    /// Chosen from the shapes (see ``ExactAttentionPlan``).
    case automatic
    /// A block of query rows at a time: scores `[rows, M]`, softmax, then `P·V`.
    case materialized
    /// FlashAttention-style: online softmax over key tiles; workspace independent of N and M.
    case tiled
}

/// How one exact-attention call is cut into work: the implementation, the query rows per block
/// (per head; the `H/Hkv` heads of a group are stacked, so a block's GEMMs have
/// `group · queryBlock` rows), the key tile, the threads, and the workspace that implies.
public struct ExactAttentionPlan: Sendable, Equatable {
    public let shape: AttentionShape
    public let implementation: ExactAttentionImplementation
    /// Query positions per block, per head.
    public let queryBlock: Int
    /// Keys per tile (tiled), or `M` (materialized).
    public let keyTile: Int
    public let threads: Int
    /// Tiled: contiguous key ranges per query block run as separate work items and merged (the
    /// associative (max, sum, output) rule), so a decode step keeps every core busy even when
    /// `B·Hkv` is small. 1 unless there are fewer than 8 blocks; a function of the shape only.
    public let keySplits: Int

    /// Rows of a block's GEMMs: the group's heads stacked.
    public var stackedRows: Int { shape.group * queryBlock }
    /// Number of independent work items (batch × KV head × query block).
    public var workItems: Int { shape.B * shape.Hkv * ((shape.N + queryBlock - 1) / queryBlock) }
    /// Floats and ints of one worker's scratch: the stacked queries, a score block, and for the
    /// tiled kernel the output accumulator with its running max and sum; per-row column limits.
    var workerScratch: (floats: Int, ints: Int) {
        let (r, d, dv) = (stackedRows, shape.d, shape.dv)
        let (scores, o1) = r.multipliedReportingOverflow(by: keyTile)
        if o1 { return (Int.max / 8, 0) }
        switch implementation {
        case .tiled: return (r * (d + dv + 2) + scores, r)
        default: return (r * d + scores, r)
        }
    }
    /// Bytes of scratch one worker thread allocates (once, for all its work items).
    public var workspaceBytesPerThread: Int { (workerScratch.floats + workerScratch.ints) * 4 }
    /// Bytes of scratch for the whole call, beyond inputs and output (workers' scratch, plus the
    /// split results when keys are split).
    public var workspaceBytes: Int {
        let splitResults = keySplits > 1 ? workItems * keySplits * stackedRows * (shape.dv + 2) * 4 : 0
        return workspaceBytesPerThread * min(threads, max(workItems * keySplits, 1)) + splitResults
    }

    /// Score rows a materialized block may hold: its `[rows, M]` buffer stays under 16 MiB.
    static let materializedScoreBudget = 4 << 20

    /// Chooses block sizes for `shape`.
    ///
    /// Tiled blocks stack about 256 rows (queries × group) against 512-key tiles: the score tile
    /// (512 KiB) stays in L2, and OpenBLAS runs these GEMMs (inner dimension d = 64) at about 80%
    /// of its single-thread peak; 128-row or 256-key tiles measured 5–15% slower.
    /// Materialized blocks hold about 256 stacked rows of `M` scores, fewer when `M` is large.
    /// `automatic` takes the tiled path once `M` exceeds 1024 keys, where the materialized score
    /// block stops fitting in cache (measured: see the README's benchmark table).
    public init(shape: AttentionShape, implementation: ExactAttentionImplementation = .automatic,
                threads: Int = Parallel.defaultThreads, queryBlock: Int? = nil, keyTile: Int? = nil,
                keySplits: Int? = nil) {
        let impl: ExactAttentionImplementation =
            implementation == .automatic ? (shape.M > 1024 ? .tiled : .materialized) : implementation
        let g = max(1, shape.group)
        let targetRows = 256
        var rows = max(1, targetRows / g)
        if impl == .materialized {
            rows = max(1, min(rows, Self.materializedScoreBudget / max(1, shape.M * g)))
        }
        rows = min(rows, max(1, shape.N))
        // Enough items (8) to keep the cores busy when the batch and head count are small. The
        // rule looks at the shape only, never the thread count, so 1 and 2 threads compute the
        // same blocks and give bitwise the same result.
        while rows > 8, shape.B * shape.Hkv * ((shape.N + rows - 1) / rows) < 8 { rows /= 2 }
        self.shape = shape
        self.implementation = impl
        self.queryBlock = max(1, queryBlock ?? rows)
        self.keyTile = impl == .tiled ? max(1, min(keyTile ?? 512, max(1, shape.M))) : max(1, shape.M)
        self.threads = max(1, threads)
        let items = shape.B * shape.Hkv * ((shape.N + self.queryBlock - 1) / self.queryBlock)
        let automaticSplits = items > 0 && items < 8 ? max(1, min((8 + items - 1) / items, shape.M / (4 * self.keyTile))) : 1
        self.keySplits = impl == .tiled ? max(1, keySplits ?? automaticSplits) : 1
    }
}

