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
    /// tiled kernel the output accumulator with its running max and sum; per-row column limits (both edges).
    var workerScratch: (floats: Int, ints: Int) {
        let (r, d, dv) = (stackedRows, shape.d, shape.dv)
        let (scores, o1) = r.multipliedReportingOverflow(by: keyTile)
        if o1 { return (Int.max / 8, 0) }
        switch implementation {
        case .tiled: return (r * (d + dv + 2) + scores, 2 * r)
        default: return (r * d + scores, 2 * r)
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


extension ExactAttentionPlan {
    /// Keys per tile of a decoding step's plan: one tile is `stackedRows × 128` scores, a few
    /// microseconds of work, so a split of one tile is still worth a work item.
    public static let decodingKeyTile = 128

    /// The plan of a decoding step: a few query rows (`N`, ``stackedRows`` = `group · N`) against
    /// a cache of `M` keys. Tiled, with 128-key tiles, and each query block's keys split into
    /// contiguous ranges of at least one tile until there are 8 work items: SmolLM2 (Hkv 3) and
    /// Gemma 3 (Hkv 1) have 3 and 1 blocks, which left a second core idle (measured on Zen 3,
    /// SmolLM2 Q4_1 on 2 threads: decoding at a 3.8K-token context 1.26× faster with the split
    /// and the cache's attention on both cores, 1.36× with the smaller tiles). A function of the
    /// shape only, so any thread count gives the same blocks and bitwise the same result. A
    /// prompt fed through the cache in chunks (512 query rows) takes it too: 8 or more query blocks,
    /// so no split, and the smaller tiles measured no slower there (Gemma 3's 4K prefill through the
    /// cache 371 → 454 tokens/s in the same day's runs, within this machine's drift).
    public static func decoding(shape: AttentionShape, threads: Int) -> ExactAttentionPlan {
        let tile = min(decodingKeyTile, max(1, shape.M))
        let base = ExactAttentionPlan(shape: shape, implementation: .tiled, threads: threads, keyTile: tile, keySplits: 1)
        let items = base.workItems
        let splits = items > 0 && items < 8 ? max(1, min((8 + items - 1) / items, shape.M / tile)) : 1
        return ExactAttentionPlan(shape: shape, implementation: .tiled, threads: threads, keyTile: tile, keySplits: splits)
    }
}


/// The work an exact-attention kernel does under a mask, counted by walking the same key tiles
/// the kernel walks (``ExactAttentionPlan/work(mask:)``, ``attentionBackwardWork(shape:mask:)``):
/// the evidence that tiles outside a causal or sliding-window band are skipped, without timing.
public struct ExactAttentionWork: Sendable, Equatable, CustomStringConvertible {
    /// Score tiles computed (one GEMM or decode-kernel call each; a tile restricted to some rows
    /// of a GQA group counts once per query head).
    public let tiles: Int
    /// Score entries computed (stacked rows × keys, summed over the tiles): `B·H·N·M` for dense
    /// attention, about `B·H·N·(W + tile)` under a sliding window of `W`.
    public let scores: Int

    public var description: String { "\(tiles) tiles, \(scores) scores" }
}

extension ExactAttentionPlan {
    /// The score tiles and entries this plan's kernel computes under `mask` (its causal limit,
    /// sliding window and key lengths; a bias or ALiBi changes no tile). Walks the kernel's own
    /// tile sequence (``AttentionLayout/walkKeyTiles``) without computing anything.
    ///
    /// - Throws: ``AttentionError`` for a mask that does not fit the plan's shape.
    public func work(mask: AttentionMask = .none) throws -> ExactAttentionWork {
        _ = try mask.validated(for: shape)
        return withCountingLayout(shape: shape, mask: mask) { L in
            var tiles = 0, scores = 0
            let G = L.group
            for item in 0..<(implementation == .tiled ? workItems * keySplits : workItems) {
                let split = implementation == .tiled ? item % keySplits : 0
                let blk = L.queryBlock(item: implementation == .tiled ? item / keySplits : item, blockRows: queryBlock)
                let band = L.blockKeys(blk)
                if implementation != .tiled {
                    if !band.isEmpty { tiles += 1; scores += G * blk.rows * band.count }
                    continue
                }
                let perSplit = ((band.count + keySplits - 1) / keySplits + keyTile - 1) / keyTile * keyTile
                let lo = min(band.upperBound, band.lowerBound + split * perSplit), hi = min(band.upperBound, lo + perSplit)
                L.walkKeyTiles(blk, keys: lo..<hi, wide: keyTile, narrow: min(keyTile, 64)) { _, w, t0, t1, _ in
                    tiles += t0 == 0 && t1 == blk.rows ? 1 : G
                    scores += G * (t1 - t0) * w
                }
            }
            return ExactAttentionWork(tiles: tiles, scores: scores)
        }
    }
}

/// The score tiles and entries the exact backward
/// (``scaledDotProductAttentionBackward(queries:keys:values:forward:outputGradient:scale:mask:gradientLayout:threads:)``)
/// computes for `shape` under `mask`, walking its own tile sequence (each tile costs five GEMMs).
public func attentionBackwardWork(shape: AttentionShape, mask: AttentionMask = .none) throws -> ExactAttentionWork {
    _ = try mask.validated(for: shape)
    let plan = AttentionBackwardPlan(shape: shape, threads: 1)
    return withCountingLayout(shape: shape, mask: mask) { L in
        var tiles = 0, scores = 0
        for item in 0..<plan.items {
            let part = item % plan.parts, bh = item / plan.parts
            let heads = (part * plan.headsPerPart)..<max(part * plan.headsPerPart, min(shape.group, (part + 1) * plan.headsPerPart))
            if heads.isEmpty { continue }
            var i0 = 0
            while i0 < shape.N {
                let blk = QueryBlock(b: bh / shape.Hkv, kvHead: bh % shape.Hkv, i0: i0, rows: min(plan.queryBlock, shape.N - i0),
                                     heads: heads)
                L.walkKeyTiles(blk, keys: L.blockKeys(blk), wide: plan.keyTile, narrow: min(plan.keyTile, 64)) { _, w, t0, t1, _ in
                    tiles += t0 == 0 && t1 == blk.rows ? 1 : heads.count
                    scores += heads.count * (t1 - t0) * w
                }
                i0 += blk.rows
            }
        }
        return ExactAttentionWork(tiles: tiles, scores: scores)
    }
}

/// A layout with the shape and mask of a problem but no data (every pointer is one dummy float):
/// for walking tiles, never for reading rows.
private func withCountingLayout<R>(shape s: AttentionShape, mask: AttentionMask, _ body: (AttentionLayout) -> R) -> R {
    let dummy = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    defer { dummy.deallocate() }
    var L = AttentionLayout(B: s.B, H: s.H, Hkv: s.Hkv, N: s.N, M: s.M, d: s.d, dv: s.dv,
                            q: dummy, qStride: (0, 0, 0), k: dummy, kStride: (0, 0, 0), v: dummy, vStride: (0, 0, 0),
                            out: dummy, scale: 1, causal: mask.isCausal, keyLengths: mask.keyLengths, bias: nil,
                            biasStride: (0, 0, 0))
    L.window = mask.slidingWindow
    return body(L)
}
