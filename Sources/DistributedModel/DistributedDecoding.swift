import AttentionTensor
import DistributedAttention
import Foundation
import LongAttention
import LongContextModel
import SequenceParallel
import SwiftMPI

/// A generation across the ranks (``LongContextModel/LogitSource``): the prompt prefilled
/// sequence-parallel by ``DistributedCausalLM/forward(_:keep:)``, its keys and values kept where
/// they were computed, then each new token decoded tensor-parallel. Every rank gets the same
/// logits (bit for bit), so every rank samples the same tokens; rank 0 prints.
///
/// The cache: full layers hold this rank's prefill positions and every `P`-th new one (position
/// `p` on rank `p % P`), about `1/P` of the single-process cache; sliding layers hold a ring of the
/// last `W` positions on every rank (the prefill's last `W - 1` all-gathered once).
public final class DistributedDecoding: LogitSource {
    public let lm: DistributedCausalLM
    public let cacheType: KVCacheType
    /// Full layers' positions of this rank, and the sliding layers' rings (nil when the model has none).
    public private(set) var fullCache: KVCache?, slidingCache: KVCache?
    /// Per layer: its index in ``fullCache`` or ``slidingCache``.
    let index: [Int]
    /// Positions in the sequence so far.
    public private(set) var length = 0
    /// Seconds of the prefill (this rank, wall).
    public private(set) var prefillSeconds = 0.0

    public init(lm: DistributedCausalLM, cacheType: KVCacheType = .float32) {
        self.lm = lm
        self.cacheType = cacheType
        let c = lm.model.config
        var full = 0, sliding = 0, idx = [Int]()
        for l in 0..<c.layers {
            if c.window(of: l) != nil { idx.append(sliding); sliding += 1 } else { idx.append(full); full += 1 }
        }
        index = idx
    }

    /// Bytes of this rank's caches.
    public var cacheBytes: Int { (fullCache?.bytes ?? 0) + (slidingCache?.bytes ?? 0) }

    public func prefill(_ prompt: [Int32], maxTokens: Int) throws -> [Float] {
        let t0 = MPI.wtime()
        let c = lm.model.config, comm = lm.comm, P = comm.size, me = comm.rank
        let (Hkv, hd, D) = (c.kvHeads, c.headDim, c.hiddenSize)
        let L = prompt.count
        let s = lm.shards(length: L)
        let ranges = s.ranges(rank: me)
        let windows = (0..<c.layers).compactMap { c.window(of: $0) }
        let fullLayers = c.layers - windows.count
        // This rank's prefill positions and its share of the new ones.
        let decodeShare = (L..<(L + maxTokens)).reduce(0) { $0 + ($1 % P == me ? 1 : 0) }
        if fullLayers > 0 {
            fullCache = try KVCache(layers: fullLayers, batch: 1, kvHeads: Hkv, capacity: max(1, s.count(rank: me) + decodeShare),
                                    headDimension: hd, type: cacheType)
        }
        let W = windows.max() ?? 1
        let tail = DistributedCausalLM.halo(before: L, window: W)
        if !windows.isEmpty {
            slidingCache = try KVCache(layers: windows.count, batch: 1, kvHeads: Hkv, capacity: tail.count + maxTokens + 1,
                                       headDimension: hd, type: cacheType, windows: windows.map { Optional($0) }, maxAppend: 1)
        }
        let kw = Hkv * hd
        let (x, _) = try lm.forward(prompt) { [self] layer, k, v in
            let n = k.shape[0]
            if c.window(of: layer) == nil {
                try fullCache!.append(layer: index[layer], keys: try k.reshaped([1, n, Hkv, hd]).permuted([0, 2, 1, 3]),
                                      values: try v.reshaped([1, n, Hkv, hd]).permuted([0, 2, 1, 3]))
                return
            }
            // The last W - 1 positions, on every rank, in position order.
            let kc = k.contiguous(), vc = v.contiguous()
            func pieces(_ r: Int) -> [(Range<Int>, Int)] {
                var out = [(Range<Int>, Int)](), row = 0
                for range in s.ranges(rank: r) {
                    let ov = overlap(range, tail)
                    if !ov.isEmpty { out.append((ov, row + ov.lowerBound - range.lowerBound)) }
                    row += range.count
                }
                return out
            }
            let counts = (0..<P).map { r in pieces(r).reduce(0) { $0 + 2 * $1.0.count * kw } }
            var buffer = [Float](repeating: 0, count: max(1, counts.reduce(0, +)))
            try buffer.withUnsafeMutableBufferPointer { b in
                var at = counts[..<me].reduce(0, +)
                for (ov, row) in pieces(me) {
                    (b.baseAddress! + at).update(from: kc.unsafeBaseAddress + row * kw, count: ov.count * kw)
                    at += ov.count * kw
                    (b.baseAddress! + at).update(from: vc.unsafeBaseAddress + row * kw, count: ov.count * kw)
                    at += ov.count * kw
                }
                try lm.gather(b.baseAddress!, counts: counts)
            }
            var tk = [Float](repeating: 0, count: tail.count * kw), tv = tk
            var at = 0
            for r in 0..<P {
                for (ov, _) in pieces(r) {
                    let dst = (ov.lowerBound - tail.lowerBound) * kw
                    for i in 0..<(ov.count * kw) { tk[dst + i] = buffer[at + i] }
                    at += ov.count * kw
                    for i in 0..<(ov.count * kw) { tv[dst + i] = buffer[at + i] }
                    at += ov.count * kw
                }
            }
            for p in 0..<tail.count {
                let kt = try Tensor(shape: [1, Hkv, 1, hd], scalars: Array(tk[(p * kw)..<((p + 1) * kw)]))
                let vt = try Tensor(shape: [1, Hkv, 1, hd], scalars: Array(tv[(p * kw)..<((p + 1) * kw)]))
                try slidingCache!.append(layer: index[layer], keys: kt, values: vt)
            }
            withExtendedLifetime((kc, vc)) {}
        }
        length = L
        // The last position is on the owner of the last chunk (rank 0 in zigzag): its row to every rank.
        let lastOwner = s.owner(of: L - 1)
        var row = [Float](repeating: 0, count: D)
        if me == lastOwner {
            let n = x.shape[0]
            for j in 0..<D { row[j] = x.unsafeBaseAddress[(n - 1) * D + j] }
        }
        try row.withUnsafeMutableBufferPointer { try comm.broadcast($0.baseAddress!, count: D, root: lastOwner) }
        let z = try row.withUnsafeBufferPointer { try lm.logits($0.baseAddress!) }
        prefillSeconds = MPI.wtime() - t0
        return z
    }

    public func next(_ token: Int32) throws -> [Float] {
        let t0 = MPI.wtime()
        let c = lm.model.config, comm = lm.comm, P = comm.size, me = comm.rank
        let (H, Hkv, hd) = (c.heads, c.kvHeads, c.headDim)
        let p = length
        var x = try lm.model.embedTokens([token])
        for layer in 0..<c.layers {
            try lm.model.runLayer(layer, x: &x, positions: [p..<(p + 1)], threads: lm.threads, projections: lm.tensorParallel) { q, k, v in
                let qh = try q.reshaped([1, 1, H, hd]).permuted([0, 2, 1, 3])
                let kh = try k.reshaped([1, 1, Hkv, hd]).permuted([0, 2, 1, 3])
                let vh = try v.reshaped([1, 1, Hkv, hd]).permuted([0, 2, 1, 3])
                if let w = c.window(of: layer) {
                    try slidingCache!.append(layer: index[layer], keys: kh, values: vh)
                    let out = try decodeAttention(queries: qh, cache: slidingCache!, layer: index[layer], scale: lm.model.scoreScale,
                                                  slidingWindow: w, outputLayout: .tokenMajor, threads: lm.threads)
                    return try out.reshaped([1, H * hd])
                }
                let i = index[layer]
                if p % P == me { try fullCache!.append(layer: i, keys: kh, values: vh) }
                // Partial results (lse, output) of every rank, merged by the (max, sum, output) rule.
                let width = H + H * hd
                let buffer = lm.scratch(width * P)
                let mine = buffer + me * width
                if fullCache!.lengths[i] > 0 {
                    let f = try decodeAttentionKeepingLSE(queries: qh, cache: fullCache!, layer: i, scale: lm.model.scoreScale,
                                                          threads: lm.threads)
                    let l = f.logSumExp.contiguous(), o = f.output.contiguous()
                    mine.update(from: l.unsafeBaseAddress, count: H)
                    (mine + H).update(from: o.unsafeBaseAddress, count: H * hd)
                } else {
                    mine.update(repeating: -.infinity, count: H)
                    (mine + H).update(repeating: 0, count: H * hd)
                }
                try lm.gather(buffer, counts: Array(repeating: width, count: P))
                var out = try Tensor(zeros: [1, H * hd])
                let op = out.unsafeMutableBaseAddress()
                for h in 0..<H {
                    var m = -Float.infinity
                    for r in 0..<P { m = max(m, buffer[r * width + h]) }
                    guard m > -.infinity else { continue }
                    var total: Float = 0
                    for r in 0..<P {
                        let l = buffer[r * width + h]
                        guard l > -.infinity else { continue }
                        let wgt = Foundation.exp(l - m)
                        total += wgt
                        let src = buffer + r * width + H + h * hd
                        for e in 0..<hd { op[h * hd + e] += wgt * src[e] }
                    }
                    for e in 0..<hd { op[h * hd + e] /= total }
                }
                return out
            }
        }
        length += 1
        let z = try x.withUnsafePointer { try lm.logits($0) }
        lm.noteDecodeStep(seconds: MPI.wtime() - t0)
        return z
    }
}

