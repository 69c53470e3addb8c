import AttentionTensor
import Foundation

/// One call's scratch: a single 64-byte aligned buffer carved into float and int regions by a
/// ``Plan`` sized before anything is allocated. The buffer comes from ``MoEWorkspace``'s cache
/// when one is large enough (else a fresh allocation checked against ``MemoryBudget``) and goes
/// back to it when the scratch is released.
///
/// `@unchecked Sendable`: the work items of one call write disjoint regions of it (fixed by the
/// routing) from the worker threads; the cache hands a buffer to one scratch at a time, under its lock.
final class MoEScratch: @unchecked Sendable {
    /// The regions of a scratch, measured before allocation.
    struct Plan {
        private(set) var bytes = 0
        private(set) var overflow = false

        /// Reserves `count` elements of 4 bytes (Float or Int32); returns the region's byte offset.
        mutating func reserve(_ count: Int) -> Int {
            let at = bytes
            let (raw, o1) = max(count, 0).multipliedReportingOverflow(by: 4)
            let (end, o2) = bytes.addingReportingOverflow(raw)
            let (aligned, o3) = end.addingReportingOverflow(63)
            overflow = overflow || o1 || o2 || o3
            bytes = overflow ? 0 : aligned & ~63
            return at
        }
    }

    /// Bytes the plan asked for.
    let bytes: Int
    private let buffer: MoEBuffer

    init(_ plan: Plan) throws {
        guard !plan.overflow else { throw MoEError.scratchOverflow }
        bytes = max(plan.bytes, 64)
        buffer = try MoEWorkspace.take(bytes: bytes)
    }

    deinit { MoEWorkspace.give(buffer) }

    func floats(_ offset: Int) -> UnsafeMutablePointer<Float> { (buffer.base + offset).assumingMemoryBound(to: Float.self) }
    func ints(_ offset: Int) -> UnsafeMutablePointer<Int32> { (buffer.base + offset).assumingMemoryBound(to: Int32.self) }
}

/// An aligned allocation owned by the workspace cache or by one scratch (`@unchecked Sendable`:
/// an immutable pointer and size; who may write the memory is the owner's business, see above).
final class MoEBuffer: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let capacity: Int

    static let hugePageBytes = 2 << 20

    init(bytes: Int) throws {
        // A large call's scratch is hundreds of MiB: transparent huge pages (2 MiB aligned,
        // MADV_HUGEPAGE) take 512 times fewer page faults to bring in.
        let huge = bytes >= Self.hugePageBytes
        let size = huge ? (bytes + Self.hugePageBytes - 1) / Self.hugePageBytes * Self.hugePageBytes : bytes
        do { try MemoryBudget.check(size) } catch { throw MoEError.allocationFailed(bytes: size) }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, huge ? Self.hugePageBytes : 64, size) == 0, let raw else { throw MoEError.allocationFailed(bytes: size) }
        #if os(Linux)
        if huge { _ = madvise(raw, size, Int32(MADV_HUGEPAGE)) }   // advice only
        #endif
        base = raw
        capacity = size
    }

    deinit { free(base) }
}

/// The scratch buffers of finished calls, kept for the next ones.
///
/// A forward or backward at T = 4096 tokens, D = 512, F = 1408 uses 30–300 MiB of scratch. Fresh
/// memory is zero-filled by the kernel on first touch, which cost about a fifth of a backward's
/// time; so released buffers (a call's scratch, and the activations a ``MoEForward`` kept once it
/// is gone) stay here, at most ``maximumBuffers`` of them and ``maximumBytes`` in all, and a call
/// takes the smallest one large enough. Thread-safe. Buffers under 1 MiB are not kept. The cache
/// is registered with ``MemoryBudget``: its bytes count against a fixed budget, and an allocation
/// that would not fit otherwise empties it.
public enum MoEWorkspace {
    private struct State {
        var buffers: [MoEBuffer] = []
        var maximumBytes = 1 << 30
        var maximumBuffers = 16
    }
    private static let state = Locked(State())
    static let smallest = 1 << 20
    /// Registers the cache with the memory budget, once, before it first holds a buffer.
    private static let registered: Void = MemoryBudget.registerCache(held: { cachedBytes }, release: { releaseCache() })

    /// Bytes the cache may hold (default 1 GiB; 0 turns the cache off and empties it).
    public static var maximumBytes: Int {
        get { state.withLock { $0.maximumBytes } }
        set { state.withLock { $0.maximumBytes = max(0, newValue); trim(&$0) } }
    }

    /// Buffers the cache may hold (default 16, about a training step of a 16-layer model).
    public static var maximumBuffers: Int {
        get { state.withLock { $0.maximumBuffers } }
        set { state.withLock { $0.maximumBuffers = max(0, newValue); trim(&$0) } }
    }

    /// Bytes held now.
    public static var cachedBytes: Int { state.withLock { $0.buffers.reduce(0) { $0 + $1.capacity } } }

    /// Frees every cached buffer.
    public static func releaseCache() {
        let dropped = state.withLock { s -> [MoEBuffer] in defer { s.buffers = [] }; return s.buffers }
        _ = dropped   // freed here, outside the lock
    }

    /// The smallest cached buffer of at least `bytes`, or a new one.
    static func take(bytes: Int) throws -> MoEBuffer {
        if bytes >= smallest {
            let found = state.withLock { s -> MoEBuffer? in
                guard let i = s.buffers.indices.filter({ s.buffers[$0].capacity >= bytes })
                    .min(by: { s.buffers[$0].capacity < s.buffers[$1].capacity }) else { return nil }
                return s.buffers.remove(at: i)
            }
            if let found { return found }
        }
        return try MoEBuffer(bytes: bytes)
    }

    /// Keeps `buffer` for a later call when it fits the limits (evicting the smallest buffers).
    static func give(_ buffer: MoEBuffer) {
        guard buffer.capacity >= smallest else { return }
        _ = registered
        let evicted = state.withLock { s -> [MoEBuffer] in
            s.buffers.append(buffer)
            return trim(&s)
        }
        _ = evicted
    }

    /// Drops the smallest buffers until the limits hold; returns them (to be freed outside the lock).
    @discardableResult
    private static func trim(_ s: inout State) -> [MoEBuffer] {
        var dropped = [MoEBuffer]()
        s.buffers.sort { $0.capacity > $1.capacity }
        while !s.buffers.isEmpty,
              s.buffers.count > s.maximumBuffers || s.buffers.reduce(0, { $0 + $1.capacity }) > s.maximumBytes {
            dropped.append(s.buffers.removeLast())
        }
        return dropped
    }
}

/// A unit of parallel work: rows `rows` of expert `expert`'s group (or, for the weight-gradient
/// items, rows of one weight), with a cost used to hand the largest items out first.
struct MoEWorkItem {
    var kind: Int
    var expert: Int
    var start: Int
    var end: Int
    var cost: Int
}

extension Array where Element == MoEWorkItem {
    /// Largest first (longest-processing-time order), ties in creation order: the order is a pure
    /// function of the routing, so the results never depend on which worker ran an item.
    func largestFirst() -> [MoEWorkItem] {
        enumerated().sorted { a, b in a.element.cost != b.element.cost ? a.element.cost > b.element.cost : a.offset < b.offset }
            .map(\.element)
    }
}

/// `count` rows in `[start, end)` blocks of nearly equal size close to `target` (between about
/// 2/3 and 3/2 of it, or all rows when fewer than that): no small remainder block, whose GEMMs
/// would cost almost as much as a full one. A function of `count` and `target` only.
func rowBlocks(_ count: Int, _ target: Int) -> [(Int, Int)] {
    guard count > 0 else { return [] }
    let blocks = max(1, Int((Double(count) / Double(target)).rounded()))
    return (0..<blocks).map { (count * $0 / blocks, count * ($0 + 1) / blocks) }
}
