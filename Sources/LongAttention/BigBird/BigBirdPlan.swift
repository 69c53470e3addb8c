import AttentionTensor

/// Which key blocks each query block of each head attends to in BigBird's block-sparse pattern
/// (ITC layout: Zaheer et al. 2020, Hugging Face's block-sparse layer).
///
/// With `nb = ceil(N / b)` blocks of `b` positions (the last may be partial):
/// - query blocks `0..<g` and `nb-g..<nb` are global rows: they attend to every key;
/// - every other query block `i` attends to key blocks `0..<g` and `nb-g..<nb` (global), the
///   window `i - w/2 ... i + w/2`, and `r` random blocks drawn without replacement from the blocks
///   not already listed — per query head, shared across the batch, a pure function of `seed`.
///
/// Causal plans keep only the first `g` blocks as global (attention sinks), the window up to the
/// diagonal block, random blocks strictly before the window, and apply the causal mask inside
/// the diagonal block; global query rows attend causally to every earlier key.
public struct BigBirdPlan: Sendable, Equatable {
    /// Sequence length `N` (queries and keys).
    public let sequenceLength: Int
    /// Query heads `H`; random blocks differ per head.
    public let heads: Int
    /// Block size `b`.
    public let blockSize: Int
    /// Global blocks `g` at each end (the start only, when causal).
    public let globalBlocks: Int
    /// Window `w` in blocks (odd).
    public let windowBlocks: Int
    /// Random blocks `r` per query block (fewer where fewer candidates exist).
    public let randomBlocks: Int
    public let causal: Bool
    /// `random[h][i]`: the random key blocks of query block `i` for head `h` (empty for global rows).
    public let random: [[[Int]]]

    /// Number of blocks `nb = ceil(N / b)`.
    public var blockCount: Int { (sequenceLength + blockSize - 1) / blockSize }

    /// How a key block is attended.
    public enum BlockKind: UInt8, Sendable {
        case none = 0, window = 1, global = 2, random = 3
    }

    /// A plan with random blocks drawn from `seed`.
    public init(sequenceLength: Int, heads: Int, blockSize: Int = 64, globalBlocks: Int = 1, windowBlocks: Int = 3,
                randomBlocks: Int = 3, seed: UInt64 = 0, causal: Bool = false) throws {
        try Self.validate(N: sequenceLength, H: heads, b: blockSize, g: globalBlocks, w: windowBlocks, r: randomBlocks)
        self.sequenceLength = sequenceLength
        self.heads = heads
        self.blockSize = blockSize
        self.globalBlocks = globalBlocks
        self.windowBlocks = windowBlocks
        self.randomBlocks = randomBlocks
        self.causal = causal
        let nb = (sequenceLength + blockSize - 1) / blockSize
        var random = [[[Int]]]()
        for h in 0..<heads {
            // One stream per head, derived from the seed alone: the plan does not depend on thread
            // count, batch or machine.
            var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(h) &+ 0x632B_E59B_D9B4_E019)
            var rows = [[Int]](repeating: [], count: nb)
            for i in 0..<nb where !Self.isGlobalRow(i, nb: nb, g: globalBlocks, causal: causal) {
                let taken = Set(Self.structuralBlocks(i, nb: nb, g: globalBlocks, w: windowBlocks, causal: causal))
                let limit = causal ? i : nb   // causal: strictly earlier blocks only
                var candidates = (0..<limit).filter { !taken.contains($0) }
                // Partial Fisher–Yates: the first r of a seeded shuffle, i.e. r draws without replacement.
                let count = min(randomBlocks, candidates.count)
                for k in 0..<count {
                    let j = k + Int(rng.next() % UInt64(candidates.count - k))
                    candidates.swapAt(k, j)
                }
                rows[i] = Array(candidates.prefix(count)).sorted()
            }
            random.append(rows)
        }
        self.random = random
    }

    /// A plan with explicit random blocks (window `w` blocks, 3 by default).
    ///
    /// - Non-causal: Hugging Face's layout, for one global block (`g = 1`): `plan` is
    ///   `[H, nb - 2, r]` row-major, row `i - 1` listing the random key blocks of query block `i`
    ///   (`i = 1 ... nb - 2`; blocks 0 and `nb - 1` are global rows). Entries lie in `0 ..< nb`;
    ///   one that repeats a window or global block is attended once (the plan is a mask).
    /// - Causal, any `g`: `[H, nb - 1, r]`, row `i - 1` for query block `i = 1 ... nb - 1` (the
    ///   last block is not global here). The rows of the global query blocks `1 ..< g` are all
    ///   `-1`; every other entry is an eligible block (after the sinks `0 ..< g`, and strictly
    ///   before the window: `g <= j < i - w/2`) or `-1`, an unused slot (early blocks have fewer
    ///   than `r` eligible blocks).
    ///
    /// `-1` marks an unused slot in both layouts; any other entry outside the rules is refused
    /// with ``AttentionError/invalidArgument(name:value:expected:)``. ``explicitRandomPlan()`` exports a plan in
    /// the same layout.
    public init(sequenceLength: Int, heads: Int, blockSize: Int, globalBlocks g: Int = 1, windowBlocks: Int = 3,
                randomPlan plan: [Int], planShape: [Int], causal: Bool = false) throws {
        try Self.validate(N: sequenceLength, H: heads, b: blockSize, g: g, w: windowBlocks, r: planShape.last ?? 0)
        guard causal || g == 1 else {
            throw AttentionError.invalidArgument(name: "globalBlocks", value: "\(g)", expected: "1 for the non-causal explicit plan layout [H, nb - 2, r]")
        }
        let nb = (sequenceLength + blockSize - 1) / blockSize
        let rowsPerHead = Self.explicitRows(nb: nb, causal: causal)
        let layout = causal ? "[H, nb - 1, r]" : "[H, nb - 2, r]"
        guard planShape.count == 3, planShape[0] == heads, planShape[1] == rowsPerHead,
              planShape.reduce(1, *) == plan.count else {
            throw AttentionError.shapeMismatch(
                tensor: "\(causal ? "causal " : "")random plan", shape: planShape,
                expected: "\(layout) = [\(heads), \(rowsPerHead), r] for N = \(sequenceLength), b = \(blockSize), holding \(plan.count) entries")
        }
        let r = planShape[2]
        self.sequenceLength = sequenceLength
        self.heads = heads
        self.blockSize = blockSize
        self.globalBlocks = g
        self.windowBlocks = windowBlocks
        self.randomBlocks = r
        self.causal = causal
        var random = [[[Int]]]()
        for h in 0..<heads {
            var rows = [[Int]](repeating: [], count: nb)
            for i in 1..<(rowsPerHead + 1) {
                let listed = plan[(h * rowsPerHead + i - 1) * r ..< (h * rowsPerHead + i) * r]
                if Self.isGlobalRow(i, nb: nb, g: g, causal: causal) {
                    // A global (sink) query block already sees every earlier key: its row is unused.
                    if let j = listed.first(where: { $0 != -1 }) {
                        throw AttentionError.invalidArgument(
                            name: "random plan entry at [\(h), \(i - 1)]", value: "\(j)",
                            expected: "-1: query block \(i) is one of the \(g) global blocks, its row must be all -1")
                    }
                    continue
                }
                for j in listed where j != -1 {
                    let eligible = causal ? (j >= g && j < i - windowBlocks / 2) : (j >= 0 && j < nb)
                    guard eligible else {
                        let rule = causal ? "\(g) ..< \(max(g, i - windowBlocks / 2)) (after the sinks, before the window)" : "0 ..< \(nb)"
                        throw AttentionError.invalidArgument(
                            name: "random plan entry at [\(h), \(i - 1)]", value: "\(j)",
                            expected: "an eligible block for query block \(i): \(rule), or -1 for an unused slot")
                    }
                }
                let taken = Set(Self.structuralBlocks(i, nb: nb, g: g, w: windowBlocks, causal: causal))
                rows[i] = Array(Set(listed.filter { $0 != -1 && !taken.contains($0) })).sorted()
            }
            random.append(rows)
        }
        self.random = random
    }

    /// Rows per head of an explicit plan: `nb - 2` non-causal, `nb - 1` causal.
    static func explicitRows(nb: Int, causal: Bool) -> Int { max(causal ? nb - 1 : nb - 2, 0) }

    /// The random blocks in the explicit layout (`[H, nb - 2, r]`, or `[H, nb - 1, r]` when causal;
    /// `-1` in unused slots and in the rows of global blocks), which
    /// ``init(sequenceLength:heads:blockSize:globalBlocks:windowBlocks:randomPlan:planShape:causal:)``
    /// reads back into the same plan. Non-causal plans need one global block (the layout's rows assume it).
    public func explicitRandomPlan() throws -> (shape: [Int], values: [Int]) {
        guard causal || globalBlocks == 1 else {
            throw AttentionError.invalidArgument(name: "globalBlocks", value: "\(globalBlocks)", expected: "1 for the explicit plan layout")
        }
        let rows = Self.explicitRows(nb: blockCount, causal: causal)
        var values = [Int](repeating: -1, count: heads * rows * randomBlocks)
        for h in 0..<heads {
            for i in 1..<(rows + 1) {
                for (slot, j) in random[h][i].prefix(randomBlocks).enumerated() {
                    values[(h * rows + i - 1) * randomBlocks + slot] = j
                }
            }
        }
        return ([heads, rows, randomBlocks], values)
    }

    static func validate(N: Int, H: Int, b: Int, g: Int, w: Int, r: Int) throws {
        guard N >= 1, H >= 1 else { throw AttentionError.invalidArgument(name: N >= 1 ? "heads H" : "sequence length N", value: "\(N >= 1 ? H : N)", expected: "at least 1") }
        guard b >= 1 else { throw AttentionError.invalidArgument(name: "blockSize", value: "\(b)", expected: "at least 1") }
        guard g >= 0 else { throw AttentionError.invalidArgument(name: "globalBlocks", value: "\(g)", expected: ">= 0") }
        guard w >= 1, w % 2 == 1 else { throw AttentionError.invalidArgument(name: "windowBlocks", value: "\(w)", expected: "odd and >= 1") }
        guard r >= 0 else { throw AttentionError.invalidArgument(name: "randomBlocks", value: "\(r)", expected: ">= 0") }
        guard b <= 1 << 16, H <= 1 << 16, g <= 1 << 20, w <= 1 << 20, r <= 1 << 16 else {
            let (name, value, most) = b > 1 << 16 ? ("blockSize", b, 1 << 16) : H > 1 << 16 ? ("heads H", H, 1 << 16)
                : g > 1 << 20 ? ("globalBlocks", g, 1 << 20) : w > 1 << 20 ? ("windowBlocks", w, 1 << 20) : ("randomBlocks", r, 1 << 16)
            throw AttentionError.invalidArgument(name: name, value: "\(value)", expected: "at most \(most)")
        }
    }

    static func isGlobalRow(_ i: Int, nb: Int, g: Int, causal: Bool) -> Bool {
        i < g || (!causal && i >= nb - g)
    }

    /// Global and window key blocks of a non-global query block, sorted, without duplicates.
    static func structuralBlocks(_ i: Int, nb: Int, g: Int, w: Int, causal: Bool) -> [Int] {
        var s = Set<Int>()
        for j in 0..<min(g, nb) { s.insert(j) }
        if !causal { for j in max(0, nb - g)..<nb { s.insert(j) } }
        let lo = max(0, i - w / 2), hi = causal ? i : min(nb - 1, i + w / 2)
        if lo <= hi { for j in lo...hi { s.insert(j) } }
        return s.sorted()
    }

    /// Whether query block `i` is a global row (attends to every key, causally when causal).
    public func isGlobalRow(_ i: Int) -> Bool { Self.isGlobalRow(i, nb: blockCount, g: globalBlocks, causal: causal) }

    /// Global and window key blocks of query block `i` (shared by all heads), sorted.
    public func structuralBlocks(_ i: Int) -> [Int] {
        Self.structuralBlocks(i, nb: blockCount, g: globalBlocks, w: windowBlocks, causal: causal)
    }

    /// Every key block query block `i` of head `h` attends, sorted.
    public func keyBlocks(head h: Int, queryBlock i: Int) -> [Int] {
        if isGlobalRow(i) { return Array(0..<(causal ? i + 1 : blockCount)) }
        return (structuralBlocks(i) + random[h][i]).sorted()
    }

    /// How query block `i` of head `h` attends key block `j`.
    public func kind(head h: Int, queryBlock i: Int, keyBlock j: Int) -> BlockKind {
        let nb = blockCount, g = globalBlocks
        if isGlobalRow(i) { return (!causal || j <= i) ? .global : .none }
        if j < g || (!causal && j >= nb - g) { return .global }
        if j >= i - windowBlocks / 2 && j <= (causal ? i : i + windowBlocks / 2) { return .window }
        return random[h][i].contains(j) ? .random : .none
    }

    /// The block mask `[H, nb, nb]` (row-major): 0 none, 1 window, 2 global, 3 random
    /// (``BlockKind`` raw values).
    public func blockMask() -> [UInt8] {
        let nb = blockCount
        var mask = [UInt8](repeating: 0, count: heads * nb * nb)
        for h in 0..<heads { for i in 0..<nb { for j in 0..<nb {
            mask[(h * nb + i) * nb + j] = kind(head: h, queryBlock: i, keyBlock: j).rawValue
        } } }
        return mask
    }

    /// Whether query position `p` of head `h` attends key position `q` (the element-level mask:
    /// the block mask, and within the diagonal block the causal mask when causal).
    public func attends(head h: Int, query p: Int, key q: Int) -> Bool {
        let b = blockSize
        if causal && q > p { return false }
        return kind(head: h, queryBlock: p / b, keyBlock: q / b) != .none
    }

    /// Key blocks computed per head (for FLOP counts): Σ over query blocks of attended blocks.
    public func attendedBlocks(head h: Int) -> Int {
        (0..<blockCount).reduce(0) { $0 + keyBlocks(head: h, queryBlock: $1).count }
    }
}
