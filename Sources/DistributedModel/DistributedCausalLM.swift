import AttentionTensor
import DistributedAttention
import Foundation
import LongAttention
import LongContextModel
import SequenceParallel
import SwiftMPI

/// What one rank measured in a distributed prefill (cumulative over calls).
public struct DistributedPrefillStatistics: Sendable, Codable {
    /// Positions processed by this rank and by the whole job.
    public var localTokens = 0, tokens = 0
    public var seconds = 0.0
    /// Full layers: time in the ring and its bytes sent; the ring's waits for blocks not hidden behind compute.
    public var ringSeconds = 0.0, ringWaitSeconds = 0.0, ringBytes = 0
    /// Sliding layers: time from posting the halo exchange to its completion (the exchange only),
    /// the bytes this rank sent, and the time in the windowed attention itself.
    public var haloSeconds = 0.0, haloBytes = 0, windowedSeconds = 0.0
    public init() {}
}

/// What one rank measured in tensor-parallel decoding (cumulative).
public struct DistributedDecodeStatistics: Sendable, Codable {
    public var steps = 0
    public var seconds = 0.0
    /// Time in the all-gathers (products' rows, attention partials, logits) and the floats this rank contributed.
    public var gatherSeconds = 0.0, gatherCalls = 0, floatsSent = 0
    public init() {}
}

/// A pretrained ``LongContextModel/CausalLM`` run across the ranks of a communicator, each rank
/// with the whole weights mapped (one page-cache copy per machine) and its share of the work:
///
/// - Prefill (sequence parallel): the prompt's positions are split zigzag (``SequenceParallel/SequenceShards``,
///   `2P` chunks, rank `r` holds chunks `r` and `2P-1-r`), each rank runs every layer on its rows
///   with the model's own layer (``LongContextModel/CausalLM/runLayer(_:x:positions:threads:projections:attention:)``:
///   norms, projections and MLP need no communication); a full layer's attention is the ring
///   (``DistributedAttention/RingAttention``), a sliding layer's only needs the `W - 1` keys and
///   values before each chunk, exchanged point to point (a chunk shorter than the window gathers
///   them from several predecessors).
/// - Decoding (tensor parallel): the KV cache stays where the prefill computed it — full layers
///   position-sharded (each rank the positions it prefilled, new positions round-robin), sliding
///   layers a ring of the last `W` positions on every rank (replicated: `W` rows); every product
///   of the new token is split by output rows across the ranks (each reads `1/P` of each weight)
///   and its rows all-gathered, one gather per group (q/k/v, o, gate/up, down, LM head); a full
///   layer's attention merges the ranks' partial results `(lse, output)` in one more gather.
///
/// Every rank must make the same calls with the same arguments. Errors inside a collective leave
/// the communicator unusable (the caller aborts the job, as the `attn dist` commands do).
public final class DistributedCausalLM {
    public let model: CausalLM
    public let comm: Communicator
    /// Worker threads per rank.
    public let threads: Int
    public private(set) var prefillStatistics = DistributedPrefillStatistics()
    public private(set) var decodeStatistics = DistributedDecodeStatistics()

    /// Output rows of the tensor-parallel products are split in units of this many rows (whole
    /// heads for head dimensions of 64, whole chunks of the quantised kernels).
    static let splitUnit = 64
    private var slices: [String: WeightMatrix] = [:]
    private var scratch: UnsafeMutablePointer<Float>? = nil
    private var scratchCount = 0

    public init(model: CausalLM, comm: Communicator, threads: Int = 1) throws {
        guard model.isDenseExact else {
            throw ModelError.unsupportedModel(operation: "a distributed run", requirement: "exact-attention layers with dense MLPs")
        }
        guard (0..<model.config.layers).allSatisfy({ model.layerMask($0).alibi == nil }) else {
            throw ModelError.unsupportedModel(operation: "a distributed run", requirement: "RoPE positions (ALiBi is not merged across ranks)")
        }
        guard threads >= 1 else { throw ModelError.invalidOption(name: "threads", value: "\(threads)", expected: "at least 1") }
        (self.model, self.comm, self.threads) = (model, comm, threads)
    }

    deinit { scratch?.deallocate() }

    var config: ModelConfig { model.config }
    var P: Int { comm.size }

    /// The zigzag split of a sequence of `length` positions.
    public func shards(length: Int) -> SequenceShards { SequenceShards(length: length, ranks: P, layout: .zigzag) }

    /// The fewest positions a distributed forward takes: one per chunk.
    public var minimumTokens: Int { 2 * P }

    // MARK: - Sequence-parallel forward

    /// Runs the whole model over `tokens` (one sequence) split zigzag across the ranks; returns this
    /// rank's rows of the last hidden state (before the final norm) `[n, D]` and their positions.
    /// `keep` receives each layer's keys and values of this rank's rows (token-major, after norm and RoPE).
    public func forward(_ tokens: [Int32], keep: ((_ layer: Int, _ k: Tensor, _ v: Tensor) throws -> Void)? = nil) throws
        -> (x: Tensor, ranges: [Range<Int>]) {
        let L = tokens.count
        guard L >= minimumTokens else {
            throw ModelError.tooFewTokens(input: "a distributed forward across \(P) ranks (one token per zigzag chunk)", count: L, minimum: minimumTokens)
        }
        let start = MPI.wtime()
        let s = shards(length: L)
        let ranges = s.ranges(rank: comm.rank)
        var mine = [Int32]()
        for r in ranges { mine += tokens[r] }
        var x = try model.embedTokens(mine)
        let ring = RingAttention(comm: comm, threads: threads)
        for layer in 0..<config.layers {
            try model.runLayer(layer, x: &x, positions: ranges, threads: threads) { q, k, v in
                let out: Tensor
                if let w = config.window(of: layer) {
                    out = try windowedAttention(layer: layer, window: w, q: q, k: k, v: v, shards: s)
                } else {
                    out = try ringAttention(ring, q: q, k: k, v: v, shards: s)
                }
                try keep?(layer, k, v)
                return out
            }
        }
        prefillStatistics.localTokens += mine.count
        prefillStatistics.tokens += L
        prefillStatistics.seconds += MPI.wtime() - start
        return (x, ranges)
    }

    /// Rows `[n, heads·hd]` of this rank's chunks as head-major chunk tensors `[1, heads, len, hd]`.
    func headMajor(_ t: Tensor, heads: Int, ranges: [Range<Int>]) throws -> [Tensor] {
        let hd = config.headDim
        var row = 0, out = [Tensor]()
        for r in ranges {
            out.append(try t.slice(axis: 0, row..<(row + r.count)).reshaped([1, r.count, heads, hd]).permuted([0, 2, 1, 3]).contiguous())
            row += r.count
        }
        return out
    }

    /// A full layer: the ring over the zigzag shards (causal), the output back as token-major rows.
    func ringAttention(_ ring: RingAttention, q: Tensor, k: Tensor, v: Tensor, shards s: SequenceShards) throws -> Tensor {
        let c = config, ranges = s.ranges(rank: comm.rank)
        let sq = ShardedTensor(shards: s, rank: comm.rank, chunks: try headMajor(q, heads: c.heads, ranges: ranges))
        let sk = ShardedTensor(shards: s, rank: comm.rank, chunks: try headMajor(k, heads: c.kvHeads, ranges: ranges))
        let sv = ShardedTensor(shards: s, rank: comm.rank, chunks: try headMajor(v, heads: c.kvHeads, ranges: ranges))
        let f = try ring.forward(queries: sq, keys: sk, values: sv, scale: model.scoreScale, causal: true)
        prefillStatistics.ringSeconds += f.statistics.seconds
        prefillStatistics.ringWaitSeconds += f.statistics.waitSeconds
        prefillStatistics.ringBytes += f.statistics.bytesSent
        let width = c.heads * c.headDim
        var out = try Tensor(uninitialized: [q.shape[0], width])
        let op = out.unsafeMutableBaseAddress()
        var row = 0
        for (chunk, r) in zip(f.output.chunks, ranges) {
            let t = try chunk.permuted([0, 2, 1, 3]).contiguous()
            (op + row * width).update(from: t.unsafeBaseAddress, count: r.count * width)
            row += r.count
        }
        return out
    }

    /// The positions a query chunk starting at `a` needs before it in a window of `w`.
    static func halo(before a: Int, window w: Int) -> Range<Int> { max(0, a - (w - 1))..<a }

    /// The owner of zigzag chunk `c` of `2P`.
    func owner(chunk c: Int) -> Int { c < P ? c : 2 * P - 1 - c }

    /// A sliding layer: each of this rank's chunks receives the keys and values of the `W - 1`
    /// positions before it from the chunks that hold them (several when chunks are shorter than the
    /// window; local ones copied), sends its own where other chunks need them, then attends locally
    /// with the layer's mask (bottom-right causal within the window).
    func windowedAttention(layer: Int, window w: Int, q: Tensor, k: Tensor, v: Tensor, shards s: SequenceShards) throws -> Tensor {
        let c = config, me = comm.rank
        let (H, Hkv, hd) = (c.heads, c.kvHeads, c.headDim)
        let kw = Hkv * hd, qw = H * hd
        let myChunks = s.chunks(rank: me)
        var rowOffset = [Int: Int]()
        var row = 0
        for ch in myChunks { rowOffset[ch] = row; row += s.chunk(ch).count }
        let kp = k.contiguous(), vp = v.contiguous()
        let kBase = kp.unsafeBaseAddress, vBase = vp.unsafeBaseAddress
        // Halo buffers of this rank's chunks.
        var haloK = [Int: Tensor](), haloV = [Int: Tensor]()
        var requests = [Request]()
        let t0 = MPI.wtime()
        func tag(_ dst: Int, _ src: Int) -> Int { 3000 + (dst * 2 * P + src) * 2 }
        do {
            for ch in myChunks where !s.chunk(ch).isEmpty {
                let need = Self.halo(before: s.chunk(ch).lowerBound, window: w)
                var hk = try Tensor(uninitialized: [need.count, kw]), hv = try Tensor(uninitialized: [need.count, kw])
                let hkp = hk.unsafeMutableBaseAddress(), hvp = hv.unsafeMutableBaseAddress()
                for src in 0..<ch {
                    let r = s.chunk(src)
                    let ov = overlap(r, need)
                    if ov.isEmpty { continue }
                    let at = (ov.lowerBound - need.lowerBound) * kw, n = ov.count * kw
                    if owner(chunk: src) == me {
                        let from = (rowOffset[src]! + ov.lowerBound - r.lowerBound) * kw
                        (hkp + at).update(from: kBase + from, count: n)
                        (hvp + at).update(from: vBase + from, count: n)
                    } else {
                        requests.append(try comm.irecv(hkp + at, count: n, from: owner(chunk: src), tag: tag(ch, src)))
                        requests.append(try comm.irecv(hvp + at, count: n, from: owner(chunk: src), tag: tag(ch, src) + 1))
                    }
                }
                haloK[ch] = hk
                haloV[ch] = hv
            }
            for dst in 0..<(2 * P) where owner(chunk: dst) != me && !s.chunk(dst).isEmpty {
                let need = Self.halo(before: s.chunk(dst).lowerBound, window: w)
                for src in myChunks where src < dst {
                    let r = s.chunk(src)
                    let ov = overlap(r, need)
                    if ov.isEmpty { continue }
                    let from = (rowOffset[src]! + ov.lowerBound - r.lowerBound) * kw, n = ov.count * kw
                    requests.append(try comm.isend(kBase + from, count: n, to: owner(chunk: dst), tag: tag(dst, src)))
                    requests.append(try comm.isend(vBase + from, count: n, to: owner(chunk: dst), tag: tag(dst, src) + 1))
                    prefillStatistics.haloBytes += 2 * n * 4
                }
            }
            try comm.wait(&requests, what: "layer \(layer)'s sliding-window halo (keys and values of the \(w - 1) positions before each chunk)")
        } catch {
            HaloQuarantine.keep(Array(haloK.values) + Array(haloV.values) + [kp, vp])
            throw error
        }
        let t1 = MPI.wtime()
        prefillStatistics.haloSeconds += t1 - t0
        var out = try Tensor(uninitialized: [q.shape[0], qw])
        let op = out.unsafeMutableBaseAddress()
        let mask = model.layerMask(layer)
        for ch in myChunks where !s.chunk(ch).isEmpty {
            let n = s.chunk(ch).count, o = rowOffset[ch]!
            let hk = haloK[ch]!, hv = haloV[ch]!, hl = hk.shape[0]
            var keys = try Tensor(uninitialized: [hl + n, kw]), values = try Tensor(uninitialized: [hl + n, kw])
            let kd = keys.unsafeMutableBaseAddress(), vd = values.unsafeMutableBaseAddress()
            kd.update(from: hk.unsafeBaseAddress, count: hl * kw)
            vd.update(from: hv.unsafeBaseAddress, count: hl * kw)
            (kd + hl * kw).update(from: kBase + o * kw, count: n * kw)
            (vd + hl * kw).update(from: vBase + o * kw, count: n * kw)
            let qv = try q.slice(axis: 0, o..<(o + n)).reshaped([1, n, H, hd]).permuted([0, 2, 1, 3])
            let kv = try keys.reshaped([1, hl + n, Hkv, hd]).permuted([0, 2, 1, 3])
            let vv = try values.reshaped([1, hl + n, Hkv, hd]).permuted([0, 2, 1, 3])
            let r = try scaledDotProductAttention(queries: qv, keys: kv, values: vv, scale: model.scoreScale, mask: mask,
                                                  outputLayout: .tokenMajor, threads: threads)
            let rc = r.contiguous()
            (op + o * qw).update(from: rc.unsafeBaseAddress, count: n * qw)
        }
        withExtendedLifetime((kp, vp)) {}
        prefillStatistics.windowedSeconds += MPI.wtime() - t1
        return out
    }

    // MARK: - Perplexity

    /// The summed loss of `chunk`'s rows `rows` (row `j` predicts `chunk[j + 1]`), each rank scoring
    /// the rows it holds (the LM head on its own rows), summed over the ranks: what
    /// ``LongContextModel/CausalLM/perplexity(tokens:context:bos:threads:chunkLoss:progress:)`` takes.
    public func chunkLoss(_ chunk: [Int32], rows: [Int]) throws -> Double {
        let (x, ranges) = try forward(chunk)
        let c = config, D = c.hiddenSize, V = c.vocabSize
        var local = [Int](), positions = [Int]()
        var row = 0
        let wanted = Set(rows)
        for r in ranges {
            for p in r { if wanted.contains(p) { local.append(row); positions.append(p) }; row += 1 }
        }
        var loss = 0.0
        let head = model.weightMatrix(model.headWeightName)
        let block = 32
        var h = try Tensor(uninitialized: [block, D]), z = try Tensor(uninitialized: [block, V])
        let hp = h.unsafeMutableBaseAddress(), zp = z.unsafeMutableBaseAddress(), xp = x.unsafeBaseAddress
        var picked = [Float](repeating: 0, count: block * D)
        for b0 in stride(from: 0, to: local.count, by: block) {
            let m = min(block, local.count - b0)
            for i in 0..<m {
                for j in 0..<D { picked[i * D + j] = xp[local[b0 + i] * D + j] }
            }
            picked.withUnsafeBufferPointer { model.finalNorm($0.baseAddress!, into: hp, rows: m) }
            model.multiply(hp, by: head, into: zp, rows: m, in: D, out: V, threads: threads)
            for i in 0..<m {
                let p = positions[b0 + i]
                guard let l = CausalLM.tokenLoss(zp + i * V, vocab: V, target: Int(chunk[p + 1])) else {
                    throw ModelError.nonFiniteLogitsAt(sequence: 0, position: p)
                }
                loss += l
            }
        }
        var total = [loss]
        try comm.allreduce(&total, .sum)
        return total[0]
    }

    // MARK: - Tensor-parallel products

    /// Rank `r`'s rows of an output `width` wide: whole units of ``splitUnit`` rows, as even as they go.
    func split(_ width: Int, rank r: Int) -> Range<Int> {
        let units = (width + Self.splitUnit - 1) / Self.splitUnit
        let lo = min(width, r * units / P * Self.splitUnit), hi = min(width, (r + 1) * units / P * Self.splitUnit)
        return lo..<hi
    }

    func slice(_ name: String, columns: Int, rows: Range<Int>) -> WeightMatrix {
        if let w = slices[name] { return w }
        let w = model.weightMatrix(name).rows(rows, columns: columns)
        slices[name] = w
        return w
    }

    func scratch(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > scratchCount {
            scratch?.deallocate()
            scratch = .allocate(capacity: count)
            scratchCount = count
        }
        return scratch!
    }

    /// Products split by output rows: this rank computes its rows of every output of the group,
    /// one all-gather gives every rank all of them.
    var tensorParallel: ProjectionGroup {
        { [self] input, rows, k, outputs, accumulate in
            let splits = outputs.map { o in (0..<P).map { split(o.width, rank: $0) } }
            let counts = (0..<P).map { r in outputs.indices.reduce(0) { $0 + rows * splits[$1][r].count } }
            let buffer = scratch(counts.reduce(0, +))
            var at = counts[..<comm.rank].reduce(0, +)
            for (i, o) in outputs.enumerated() {
                let mine = splits[i][comm.rank]
                if !mine.isEmpty {
                    model.multiply(input, by: slice(o.weight, columns: k, rows: mine), into: buffer + at, rows: rows, in: k,
                                   out: mine.count, threads: threads)
                }
                at += rows * mine.count
            }
            try gather(buffer, counts: counts)
            var off = 0
            for r in 0..<P {
                for (i, o) in outputs.enumerated() {
                    let rr = splits[i][r]
                    for j in 0..<rows where !rr.isEmpty {
                        let dst = o.output + j * o.width + rr.lowerBound, src = buffer + off + j * rr.count
                        if accumulate { for e in 0..<rr.count { dst[e] += src[e] } } else { dst.update(from: src, count: rr.count) }
                    }
                    off += rows * rr.count
                }
            }
        }
    }

    func noteDecodeStep(seconds: Double) {
        decodeStatistics.steps += 1
        decodeStatistics.seconds += seconds
    }

    func gather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        let t = MPI.wtime()
        try comm.allgather(buffer, counts: counts)
        decodeStatistics.gatherSeconds += MPI.wtime() - t
        decodeStatistics.gatherCalls += 1
        decodeStatistics.floatsSent += counts[comm.rank]
    }

    /// The logits `[V]` of the hidden row `x [D]` (before the final norm), on every rank: the LM
    /// head split by vocabulary rows.
    func logits(_ x: UnsafePointer<Float>) throws -> [Float] {
        let c = config, D = c.hiddenSize, V = c.vocabSize
        var h = [Float](repeating: 0, count: D), z = [Float](repeating: 0, count: V)
        h.withUnsafeMutableBufferPointer { model.finalNorm(x, into: $0.baseAddress!, rows: 1) }
        try h.withUnsafeBufferPointer { hb in
            try z.withUnsafeMutableBufferPointer { zb in
                try tensorParallel(hb.baseAddress!, 1, D, [ProjectionOutput(weight: model.headWeightName, output: zb.baseAddress!, width: V)], false)
            }
        }
        return z
    }
}

/// The positions in both ranges (empty, at `a`'s start, when they do not meet).
func overlap(_ a: Range<Int>, _ b: Range<Int>) -> Range<Int> {
    let lo = max(a.lowerBound, b.lowerBound), hi = min(a.upperBound, b.upperBound)
    return lo < hi ? lo..<hi : a.lowerBound..<a.lowerBound
}

/// Buffers of a halo exchange that ended in an error (transfers may be pending): kept for the
/// rest of the process, which is about to be aborted.
enum HaloQuarantine {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var kept: [Tensor] = []
    static func keep(_ buffers: [Tensor]) {
        lock.lock()
        kept += buffers
        lock.unlock()
    }
}
