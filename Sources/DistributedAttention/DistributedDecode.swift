import AttentionTensor
import Foundation
import LongAttention
import SequenceParallel
import SwiftMPI

/// A KV cache sharded by position across the ranks of a communicator (position `p` on rank
/// `p % P`, ``SequenceParallel/StripedPositions``), for decoding a context longer than one machine holds.
/// Each rank keeps a local ``LongAttention/KVCache`` of about `capacity / P` positions.
///
/// A decode step: the new token's query is broadcast from `root`, every rank attends to its
/// positions (``LongAttention/decodeAttentionKeepingLSE(queries:cache:layer:scale:threads:)``),
/// and the partial results `(lse, output)` combine by the (max, sum, output) rule in two small
/// all-reduces (the max of the log-sum-exps, then the sum of the rescaled outputs and weights).
public struct DistributedKVCache: Sendable {
    public let comm: Communicator
    public let positions: StripedPositions
    /// Positions the whole (sharded) cache holds per layer.
    public let capacity: Int
    public private(set) var local: KVCache
    /// Tokens in the whole (sharded) cache, per layer.
    public private(set) var lengths: [Int]
    /// Seconds this rank spent in the decode collectives (cumulative).
    public private(set) var collectiveSeconds = 0.0

    public init(comm: Communicator, layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension d: Int,
                valueDimension dv: Int? = nil, type: KVCacheType = .float32) throws {
        guard capacity >= 1 else { throw AttentionError.invalidArgument(name: "capacity", value: "\(capacity)", expected: "positive") }
        self.comm = comm
        self.capacity = capacity
        positions = StripedPositions(ranks: comm.size)
        // Rank r holds ⌈(L - r)/P⌉ <= ⌈capacity/P⌉ of L <= capacity positions.
        local = try KVCache(layers: layers, batch: batch, kvHeads: kvHeads,
                            capacity: (capacity + comm.size - 1) / comm.size, headDimension: d,
                            valueDimension: dv, type: type)
        lengths = Array(repeating: 0, count: layers)
    }

    /// Appends tokens at positions `length ..< length + n` of `layer`: `keys [B, Hkv, n, d]`,
    /// `values [B, Hkv, n, dv]` (the same on every rank); each rank stores the positions it owns.
    /// Every rank must call it.
    ///
    /// All or nothing on every rank: the whole `keys`/`values` are checked on every rank (layer,
    /// shapes, the global ``capacity``, NaN/Inf, the storage type's largest magnitude) and the
    /// ranks agree on the outcome in one small all-reduce before any rank stores a position. If
    /// any rank refuses (or cannot make its copy), every rank throws and no rank's cache or
    /// ``lengths`` changes: the cache stays usable. (The ranks also check that they append the
    /// same number of tokens to the same layer at the same length.)
    public mutating func append(layer: Int, keys: Tensor, values: Tensor) throws {
        var localError: Error? = nil
        var picked: (keys: Tensor, values: Tensor)? = nil
        var n = 0, start = 0
        do {
            guard (0..<lengths.count).contains(layer) else {
                throw AttentionError.invalidArgument(name: "layer", value: "\(layer)", expected: "0..<\(lengths.count)")
            }
            let c = local
            guard keys.rank == 4, values.rank == 4, keys.shape[0] == c.batch, keys.shape[1] == c.kvHeads,
                  keys.shape[3] == c.headDimension, values.shape[0] == c.batch, values.shape[1] == c.kvHeads,
                  values.shape[3] == c.valueDimension, keys.shape[2] == values.shape[2] else {
                throw AttentionError.shapeMismatch(tensor: "keys / values", shape: keys.shape + values.shape, expected: "the cache's [B, Hkv, ·, d] = [\(c.batch), \(c.kvHeads), ·, \(c.headDimension)] / dv = \(c.valueDimension), of one length")
            }
            n = keys.shape[2]
            start = lengths[layer]
            guard start + n <= capacity else {
                throw AttentionError.cacheFull(capacity: capacity, length: start, appending: n)
            }
            let k = keys.scanValues(), v = values.scanValues()
            if let i = k.invalidIndex { throw AttentionError.nonFinite(name: "keys", index: i) }
            if let i = v.invalidIndex { throw AttentionError.nonFinite(name: "values", index: i) }
            let limit = c.type.largestMagnitude
            if k.maxMagnitude > limit || v.maxMagnitude > limit {
                throw AttentionError.overflow(quantity: "the \(k.maxMagnitude > limit ? "keys" : "values") stored in a \(c.type) KV cache", bound: Double(max(k.maxMagnitude, v.maxMagnitude)), limit: Double(limit))
            }
            let mine = positions.owned(rank: comm.rank, start: start, count: n).map { $0 - start }
            if !mine.isEmpty {
                // Owned positions are every P-th from the first: gather them (a strided copy).
                func pick(_ t: Tensor) throws -> Tensor {
                    if mine.count == n { return t }
                    let (B, Hh, w) = (t.shape[0], t.shape[1], t.shape[3])
                    let c = t.contiguous()
                    var out = try Tensor(uninitialized: [B, Hh, mine.count, w])
                    let dst = out.unsafeMutableBaseAddress(), src = c.unsafeBaseAddress
                    for bh in 0..<(B * Hh) {
                        for (i, p) in mine.enumerated() {
                            (dst + (bh * mine.count + i) * w).update(from: src + (bh * n + p) * w, count: w)
                        }
                    }
                    withExtendedLifetime(c) {}
                    return out
                }
                picked = (try pick(keys), try pick(values))
            }
        } catch {
            localError = error
        }
        // Agreement (min): the lowest refusing rank, and (layer, n, length) as x and -x pairs.
        let ok = localError == nil
        var packed: [Int64] = [Int64(ok ? comm.size : comm.rank),
                               ok ? Int64(layer) : .max, ok ? -Int64(layer) : .max,
                               ok ? Int64(n) : .max, ok ? -Int64(n) : .max,
                               ok ? Int64(start) : .max, ok ? -Int64(start) : .max]
        try comm.allreduce(&packed, .min)
        if packed[0] < Int64(comm.size) {
            if let localError, packed[0] == Int64(comm.rank) { throw localError }
            throw AttentionError.rankRefused(rank: Int(packed[0]), ranks: comm.size, operation: "the append to the sharded KV cache")
        }
        for (i, value) in ["layer", "appended token count", "cache length"].enumerated() where packed[1 + 2 * i] != -packed[2 + 2 * i] {
            throw AttentionError.ranksDisagree(value: "the \(value) of an append (no rank stored it)",
                                               lowest: "\(packed[1 + 2 * i])", highest: "\(-packed[2 + 2 * i])")
        }
        // Checked above (a subset of the agreed tokens, within ⌈capacity/P⌉): cannot throw.
        if let picked { try local.append(layer: layer, keys: picked.keys, values: picked.values) }
        lengths[layer] += n
    }

    /// One decode step: `queries [B, H, 1, d]` (read on `root`, broadcast) against every position
    /// of `layer`; returns `[B, H, 1, dv]` on every rank, equal to single-process decoding to float32
    /// rounding. Every rank must call it (non-root ranks' `queries` only give the shape).
    public mutating func decode(queries: Tensor, layer: Int, scale: Float? = nil, root: Int = 0,
                                threads: Int? = nil) throws -> Tensor {
        guard queries.rank == 4, queries.shape[2] == 1 else {
            throw AttentionError.shapeMismatch(tensor: "queries", shape: queries.shape, expected: "one new query per sequence, [B, H, 1, d]")
        }
        var q = queries.contiguous()
        let t0 = MPI.wtime()
        try comm.broadcast(q.unsafeMutableBaseAddress(), count: q.count, root: root)
        var t = MPI.wtime() - t0
        let part = try decodeAttentionKeepingLSE(queries: q, cache: local, layer: layer, scale: scale, threads: threads)
        let (B, H, dv) = (q.shape[0], q.shape[1], local.valueDimension)
        let rows = B * H
        let t1 = MPI.wtime()
        var maxima = part.logSumExp.contiguous().scalars
        try comm.allreduce(&maxima, .max)
        // Rescaled outputs and weights, summed over the ranks.
        var packed = [Float](repeating: 0, count: rows * (dv + 1))
        let o = part.output.contiguous(), l = part.logSumExp.contiguous()
        for r in 0..<rows where l.unsafeBaseAddress[r] > -.infinity {
            let w = Foundation.exp(l.unsafeBaseAddress[r] - maxima[r])
            for c in 0..<dv { packed[r * dv + c] = w * o.unsafeBaseAddress[r * dv + c] }
            packed[rows * dv + r] = w
        }
        try comm.allreduce(&packed, .sum)
        t += MPI.wtime() - t1
        collectiveSeconds += t
        var out = try Tensor(uninitialized: [B, H, 1, dv])
        let p = out.unsafeMutableBaseAddress()
        for r in 0..<rows {
            let w = packed[rows * dv + r]
            for c in 0..<dv { p[r * dv + c] = w > 0 ? packed[r * dv + c] / w : 0 }
        }
        withExtendedLifetime((o, l)) {}
        return out
    }
}
