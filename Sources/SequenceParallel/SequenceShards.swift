/// How a sequence of `length` positions is split across `ranks` processes (pure index maths,
/// no MPI: the distributed attention and its unit tests share it).
///
/// - `contiguous`: `ranks` chunks, rank `r` holds chunk `r`. Under a causal mask the last rank
///   does about `2P - 1` times the first rank's work.
/// - `zigzag`: `2P` chunks, rank `r` holds chunks `r` and `2P - 1 - r` (ring-flash-attention's and
///   Megatron context parallelism's load balance): every rank gets one early and one late chunk,
///   so causal work is equal to within a chunk's diagonal.
///
/// Chunk `c` of `n` is `c·L/n ..< (c+1)·L/n` (floor division): sizes differ by at most one, and
/// chunks may be empty when `L < n`.
public struct SequenceShards: Sendable, Equatable {
    public enum Layout: String, Sendable, CaseIterable { case contiguous, zigzag }

    public let length: Int, ranks: Int, layout: Layout

    public init(length: Int, ranks: Int, layout: Layout) {
        precondition(length >= 0 && ranks >= 1)
        (self.length, self.ranks, self.layout) = (length, ranks, layout)
    }

    public var chunkCount: Int { layout == .zigzag ? 2 * ranks : ranks }

    /// Positions of chunk `c`.
    public func chunk(_ c: Int) -> Range<Int> {
        let n = chunkCount
        return (c * length / n)..<((c + 1) * length / n)
    }

    /// The chunks rank `r` holds, in sequence order.
    public func chunks(rank r: Int) -> [Int] {
        layout == .zigzag ? [r, 2 * ranks - 1 - r] : [r]
    }

    /// The position ranges rank `r` holds, in sequence order.
    public func ranges(rank r: Int) -> [Range<Int>] { chunks(rank: r).map(chunk) }

    /// Positions rank `r` holds.
    public func count(rank r: Int) -> Int { ranges(rank: r).reduce(0) { $0 + $1.count } }

    /// The rank holding position `p`.
    public func owner(of p: Int) -> Int {
        precondition(p >= 0 && p < length)
        var c = (p * chunkCount) / max(1, length)
        while chunk(c).lowerBound > p { c -= 1 }
        while chunk(c).upperBound <= p { c += 1 }
        return layout == .zigzag ? (c < ranks ? c : 2 * ranks - 1 - c) : c
    }
}

/// Query–key pairs a rank's queries attend to: bottom-right causal (query `i` sees keys
/// `j <= i + M - N`) or every pair, summed over the rank's query positions — the rank's share of
/// the attention work. With `M = keys`, `N = queries.length`.
public func attendedPairs(queries: SequenceShards, keys: Int, causal: Bool, rank: Int) -> Int {
    let offset = keys - queries.length
    var total = 0
    for range in queries.ranges(rank: rank) {
        if !causal { total += range.count * keys; continue }
        for i in range { total += min(keys, max(0, i + offset + 1)) }
    }
    return total
}

/// Work imbalance of a sharding: the busiest rank's attended pairs over the mean (1 is perfect).
public func workImbalance(queries: SequenceShards, keys: Int, causal: Bool) -> Double {
    let work = (0..<queries.ranks).map { attendedPairs(queries: queries, keys: keys, causal: causal, rank: $0) }
    let mean = Double(work.reduce(0, +)) / Double(work.count)
    return mean > 0 ? Double(work.max()!) / mean : 1
}

/// Position ownership of a KV cache sharded across ranks for decoding: position `p` lives on rank
/// `p % ranks`, so every rank holds `⌈L/P⌉` or `⌊L/P⌋` of `L` positions at every length and each
/// appended token goes to exactly one rank.
public struct StripedPositions: Sendable, Equatable {
    public let ranks: Int
    public init(ranks: Int) { precondition(ranks >= 1); self.ranks = ranks }
    public func owner(of p: Int) -> Int { p % ranks }
    /// Positions of `start ..< start + count` that rank `r` owns, in order.
    public func owned(rank r: Int, start: Int, count: Int) -> [Int] {
        (start..<(start + count)).filter { $0 % ranks == r }
    }
    /// Positions rank `r` holds of a cache of `length`.
    public func count(rank r: Int, length: Int) -> Int { length > r ? (length - r + ranks - 1) / ranks : 0 }
}

/// Keys rank `r` absorbs in causal linear attention split across ranks by contiguous query shards:
/// the keys from its first query's diagonal to its last query's (`i + M - N`), clamped to `0 ..< M`,
/// with rank 0 starting at key 0 and the last rank ending at `M`. Then rank `r`'s local call is
/// bottom-right aligned again, and the prefix state of the ranks before it holds exactly the keys
/// before its first.
/// Throws ``SequenceShardsError`` for a zigzag query sharding, a negative `M` or a rank outside
/// the sharding.
public func linearKeyRange(queries: SequenceShards, keys M: Int, rank r: Int) throws -> Range<Int> {
    guard queries.layout == .contiguous else {
        throw SequenceShardsError.nonContiguousQueries(layout: "\(queries.layout)")
    }
    guard M >= 0 else { throw SequenceShardsError.negativeKeyCount(M) }
    guard (0..<queries.ranks).contains(r) else {
        throw SequenceShardsError.rankOutOfRange(rank: r, ranks: queries.ranks)
    }
    let off = M - queries.length
    let q = queries.chunk(r)
    let lo = r == 0 ? 0 : min(max(q.lowerBound + off, 0), M)
    let hi = r == queries.ranks - 1 ? M : min(max(q.upperBound + off, 0), M)
    return lo..<max(lo, hi)
}

/// Arguments the sharding helpers refuse.
public enum SequenceShardsError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Linear attention across ranks needs contiguous query shards; the shards have `layout`.
    case nonContiguousQueries(layout: String)
    /// A key count below 0.
    case negativeKeyCount(Int)
    /// Rank `rank` outside `0..<ranks`.
    case rankOutOfRange(rank: Int, ranks: Int)

    public var description: String {
        switch self {
        case .nonContiguousQueries(let layout):
            return "invalid argument: linear attention across ranks needs contiguous query shards, got \(layout)"
        case .negativeKeyCount(let m): return "invalid argument: key count \(m) is negative"
        case .rankOutOfRange(let r, let ranks): return "invalid argument: rank \(r) outside 0..<\(ranks)"
        }
    }
}
