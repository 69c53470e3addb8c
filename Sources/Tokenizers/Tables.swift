// Hash tables keyed by bytes (token strings compared byte for byte: Swift's String equality is
// canonical equivalence, which would merge distinct tokens such as "é" and "e\u{301}") and by id pairs.

/// Byte strings → ids, open addressing. A key inserted twice keeps the last id (as llama.cpp does).
struct ByteTable: Sendable {
    private var keyBytes: [UInt8] = []
    private var keyStart: [Int32] = []
    private var keyLength: [Int32] = []
    private var values: [Int32] = []
    private var slots: [Int32]          // entry index + 1, 0 when empty
    private var mask: Int

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = [Int32](repeating: 0, count: size)
        mask = size - 1
    }

    var count: Int { values.count }

    @inline(__always)
    static func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ UInt64(n)
        var i = 0
        while i + 8 <= n {
            let w = UnsafeRawPointer(p + i).loadUnaligned(as: UInt64.self)
            h = (h ^ w) &* 0x9E37_79B9_7F4A_7C15
            h ^= h >> 29
            i += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while i < n { tail |= UInt64(p[i]) << shift; shift += 8; i += 1 }
        h = (h ^ tail) &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 32
        return h
    }

    mutating func insert(_ key: some Collection<UInt8>, _ value: Int32) {
        let bytes = Array(key)
        bytes.withUnsafeBufferPointer { b in
            let p = b.baseAddress ?? UnsafePointer(bitPattern: 1)!
            if let e = entry(p, b.count) { values[e] = value; return }
            if (values.count + 1) * 2 > slots.count { grow() }
            keyStart.append(Int32(keyBytes.count))
            keyLength.append(Int32(b.count))
            keyBytes.append(contentsOf: b)
            values.append(value)
            place(values.count - 1, Self.hash(p, b.count))
        }
    }

    private mutating func place(_ e: Int, _ h: UInt64) {
        var s = Int(truncatingIfNeeded: h) & mask
        while slots[s] != 0 { s = (s + 1) & mask }
        slots[s] = Int32(e + 1)
    }

    private mutating func grow() {
        slots = [Int32](repeating: 0, count: slots.count * 2)
        mask = slots.count - 1
        for e in 0..<values.count {
            let h = keyBytes.withUnsafeBufferPointer { kb in
                Self.hash(kb.baseAddress! + Int(keyStart[e]), Int(keyLength[e]))
            }
            place(e, h)
        }
    }

    @inline(__always)
    private func entry(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int? {
        var s = Int(truncatingIfNeeded: Self.hash(p, n)) & mask
        return slots.withUnsafeBufferPointer { sl in
            keyBytes.withUnsafeBufferPointer { kb in
                keyStart.withUnsafeBufferPointer { ks in
                    keyLength.withUnsafeBufferPointer { kl in
                        while true {
                            let v = Int(sl[s])
                            if v == 0 { return nil }
                            let e = v - 1
                            if Int(kl[e]) == n && (n == 0 || memcmpBytes(kb.baseAddress! + Int(ks[e]), p, n)) { return e }
                            s = (s + 1) & mask
                        }
                    }
                }
            }
        }
    }

    @inline(__always)
    func lookup(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int32? {
        guard let e = entry(p, n) else { return nil }
        return values[e]
    }

    func lookup(_ key: [UInt8]) -> Int32? {
        key.withUnsafeBufferPointer { b in lookup(b.baseAddress ?? UnsafePointer(bitPattern: 1)!, b.count) }
    }

    func lookup(_ key: String) -> Int32? { lookup(Array(key.utf8)) }
}

@inline(__always)
func memcmpBytes(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    var i = 0
    while i + 8 <= n {
        if UnsafeRawPointer(a + i).loadUnaligned(as: UInt64.self) != UnsafeRawPointer(b + i).loadUnaligned(as: UInt64.self) { return false }
        i += 8
    }
    while i < n { if a[i] != b[i] { return false }; i += 1 }
    return true
}

/// (left id, right id) → (rank, merged id), open addressing. The first merge of a pair wins.
struct PairTable: Sendable {
    private var keys: [UInt64]
    private var ranks: [Int32]
    private var results: [Int32]
    private var used: [Bool]
    private var mask: Int
    private(set) var count = 0

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        keys = [UInt64](repeating: 0, count: size)
        ranks = [Int32](repeating: 0, count: size)
        results = [Int32](repeating: 0, count: size)
        used = [Bool](repeating: false, count: size)
        mask = size - 1
    }

    @inline(__always)
    static func key(_ l: Int32, _ r: Int32) -> UInt64 { UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r)) }

    @inline(__always)
    private static func slot(_ k: UInt64, _ mask: Int) -> Int {
        var h = k &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 31
        return Int(truncatingIfNeeded: h) & mask
    }

    /// Returns false when the pair is already present (the earlier rank is kept).
    @discardableResult
    mutating func insert(_ l: Int32, _ r: Int32, rank: Int32, result: Int32) -> Bool {
        if (count + 1) * 2 > keys.count { grow() }
        let k = Self.key(l, r)
        var s = Self.slot(k, mask)
        while used[s] {
            if keys[s] == k { return false }
            s = (s + 1) & mask
        }
        used[s] = true; keys[s] = k; ranks[s] = rank; results[s] = result
        count += 1
        return true
    }

    private mutating func grow() {
        let oldKeys = keys, oldRanks = ranks, oldResults = results, oldUsed = used
        let size = keys.count * 2
        keys = [UInt64](repeating: 0, count: size)
        ranks = [Int32](repeating: 0, count: size)
        results = [Int32](repeating: 0, count: size)
        used = [Bool](repeating: false, count: size)
        mask = size - 1
        count = 0
        for i in 0..<oldKeys.count where oldUsed[i] {
            insert(Int32(bitPattern: UInt32(oldKeys[i] >> 32)), Int32(bitPattern: UInt32(truncatingIfNeeded: oldKeys[i])),
                   rank: oldRanks[i], result: oldResults[i])
        }
    }

    @inline(__always)
    func lookup(_ l: Int32, _ r: Int32) -> (rank: Int32, result: Int32)? {
        let k = Self.key(l, r)
        var s = Self.slot(k, mask)
        return used.withUnsafeBufferPointer { u in
            keys.withUnsafeBufferPointer { ks in
                while u[s] {
                    if ks[s] == k { return (ranks[s], results[s]) }
                    s = (s + 1) & mask
                }
                return nil
            }
        }
    }
}

/// A binary min-heap on a (primary, left) key: the smallest primary first, then the leftmost.
struct MergeHeap {
    struct Item {
        var priority: Float     // smaller first (ranks as they are, scores negated)
        var left: Int32
        var right: Int32
        var size: Int32         // bytes of the merged pair when pushed (validity check)
        var result: Int32
    }
    var items: [Item] = []

    @inline(__always) static func before(_ a: Item, _ b: Item) -> Bool {
        a.priority < b.priority || (a.priority == b.priority && a.left < b.left)
    }

    var isEmpty: Bool { items.isEmpty }
    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ x: Item) {
        items.append(x)
        var i = items.count - 1
        items.withUnsafeMutableBufferPointer { h in
            while i > 0 {
                let p = (i - 1) >> 1
                if !Self.before(h[i], h[p]) { break }
                h.swapAt(i, p)
                i = p
            }
        }
    }

    mutating func pop() -> Item {
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items.withUnsafeMutableBufferPointer { h in
                h[0] = last
                var i = 0
                let n = h.count
                while true {
                    let l = 2 * i + 1
                    if l >= n { break }
                    var c = l
                    if l + 1 < n && Self.before(h[l + 1], h[l]) { c = l + 1 }
                    if !Self.before(h[c], h[i]) { break }
                    h.swapAt(i, c)
                    i = c
                }
            }
        }
        return top
    }
}

/// Words already tokenized in one `encode` call: their bytes → their ids (at most `limit` words).
struct WordCache {
    private var keyBytes: [UInt8] = []
    private var keyStart: [Int32] = []
    private var keyLength: [Int32] = []
    private var idStart: [Int32] = []
    private var idCount: [Int32] = []
    private(set) var ids: [Int32] = []
    private var slots = [Int32](repeating: 0, count: 1 << 14)
    private var mask = (1 << 14) - 1
    let limit = 1 << 16

    var isFull: Bool { keyStart.count >= limit }

    @inline(__always)
    func lookup(_ p: UnsafePointer<UInt8>, _ n: Int, _ h: UInt64) -> Range<Int>? {
        var s = Int(truncatingIfNeeded: h) & mask
        return slots.withUnsafeBufferPointer { sl in
            keyBytes.withUnsafeBufferPointer { kb in
                while true {
                    let v = Int(sl[s])
                    if v == 0 { return nil }
                    let e = v - 1
                    if Int(keyLength[e]) == n && memcmpBytes(kb.baseAddress! + Int(keyStart[e]), p, n) {
                        let a = Int(idStart[e])
                        return a..<(a + Int(idCount[e]))
                    }
                    s = (s + 1) & mask
                }
            }
        }
    }

    mutating func insert(_ p: UnsafePointer<UInt8>, _ n: Int, _ h: UInt64, _ newIDs: ArraySlice<Int32>) {
        guard !isFull else { return }
        if (keyStart.count + 1) * 2 > slots.count {
            slots = [Int32](repeating: 0, count: slots.count * 2)
            mask = slots.count - 1
            for e in 0..<keyStart.count {
                let h2 = keyBytes.withUnsafeBufferPointer { ByteTable.hash($0.baseAddress! + Int(keyStart[e]), Int(keyLength[e])) }
                place(e, h2)
            }
        }
        keyStart.append(Int32(keyBytes.count)); keyLength.append(Int32(n))
        keyBytes.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
        idStart.append(Int32(ids.count)); idCount.append(Int32(newIDs.count))
        ids.append(contentsOf: newIDs)
        place(keyStart.count - 1, h)
    }

    private mutating func place(_ e: Int, _ h: UInt64) {
        var s = Int(truncatingIfNeeded: h) & mask
        while slots[s] != 0 { s = (s + 1) & mask }
        slots[s] = Int32(e + 1)
    }
}
