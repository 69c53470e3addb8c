import AttentionTensor
import CAttentionKernels
import LongAttention
import SequenceParallel
import SwiftMPI

/// One rank's piece of a `[B, heads, L, width]` tensor split along the sequence axis: the chunk
/// tensors it holds (`[B, heads, len, width]` each) and where they sit. Chunks may be views (a
/// strided slice): whatever is sent is sent from a contiguous copy.
public struct ShardedTensor: Sendable {
    public let shards: SequenceShards
    public let rank: Int
    /// The rank's chunks, in sequence order, with their position ranges.
    public var chunks: [Tensor]
    public var ranges: [Range<Int>] { shards.ranges(rank: rank) }

    public init(shards: SequenceShards, rank: Int, chunks: [Tensor]) {
        (self.shards, self.rank, self.chunks) = (shards, rank, chunks)
    }

    /// This rank's rows of a whole tensor (copies: the whole may be dropped afterwards). Throws
    /// unless `whole` is rank 4 with `shards.length` rows and `rank` is one of the shards' ranks.
    public init(slicing whole: Tensor, shards: SequenceShards, rank: Int) throws {
        guard whole.rank == 4 else { throw AttentionError.wrongRank(name: "the sharded tensor", expected: 4, shape: whole.shape) }
        guard whole.shape[2] == shards.length else {
            throw AttentionError.shapeMismatch(tensor: "the sharded tensor", shape: whole.shape, expected: "\(shards.length) positions on axis 2, as the shards")
        }
        guard (0..<shards.ranks).contains(rank) else {
            throw AttentionError.invalidArgument(name: "rank", value: "\(rank)", expected: "0..<\(shards.ranks)")
        }
        self.init(shards: shards, rank: rank, chunks: try shards.ranges(rank: rank).map { try whole.rows($0).contiguous() })
    }

    /// The whole tensor on `root` (nil elsewhere): every rank sends its chunks, the root places them.
    public func gather(on comm: Communicator, root: Int = 0, tag: Int = 7000) throws -> Tensor? {
        // Sent and placed as dense [B, heads, len, width] buffers: views are copied first.
        let chunks = self.chunks.map { $0.contiguous() }
        guard let first = chunks.first else { return nil }
        let (B, Hh, w) = (first.shape[0], first.shape[1], first.shape[3])
        var result: Tensor? = nil
        var received: [(Range<Int>, Tensor)] = []
        do {
            var requests: [Request] = []
            for (i, c) in chunks.enumerated() where rank != root {
                requests.append(try comm.isend(c.unsafeBaseAddress, count: c.count, to: root, tag: tag + i))
            }
            if rank == root {
                var whole = try Tensor(uninitialized: [B, Hh, shards.length, w])
                let out = whole.unsafeMutableBaseAddress()
                var recvRequests: [Request] = []
                for r in 0..<comm.size {
                    for (i, range) in shards.ranges(rank: r).enumerated() {
                        if r == root { received.append((range, chunks[i])); continue }
                        var t = try Tensor(uninitialized: [B, Hh, range.count, w])
                        recvRequests.append(try comm.irecv(t.unsafeMutableBaseAddress(), count: t.count, from: r, tag: tag + i))
                        received.append((range, t))
                    }
                }
                try comm.wait(&recvRequests, what: "the gathered result's chunks")
                for (range, t) in received where range.count > 0 {
                    for bh in 0..<(B * Hh) {
                        (out + (bh * shards.length + range.lowerBound) * w)
                            .update(from: t.unsafeBaseAddress + bh * range.count * w, count: range.count * w)
                    }
                }
                result = whole
            }
            try comm.wait(&requests, what: "rank \(root) to take this rank's chunks")
        } catch {
            // Receives or sends may be pending (a timeout): keep their buffers; the caller aborts.
            RingBufferQuarantine.keep(received.map(\.1) + chunks)
            throw error
        }
        withExtendedLifetime((received, chunks)) {}
        return result
    }
}

/// Adds `count` floats at `src` into `dst`.
@inline(__always) func accumulate(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    if count > 0 { ak_add(dst, src, count) }
}

extension Tensor {
    /// `self += other` (same shape; self made contiguous).
    mutating func add(_ other: Tensor) {
        precondition(shape == other.shape)
        let o = other.contiguous()
        let p = unsafeMutableBaseAddress()
        accumulate(p, o.unsafeBaseAddress, count)
        withExtendedLifetime(o) {}
    }
}
