import AttentionTensor
import Foundation

/// One call's scratch: a single 64-byte aligned allocation, checked against ``MemoryBudget``
/// first, carved into float and int regions by a ``Plan`` sized before anything is allocated.
final class MoEScratch {
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

    let bytes: Int
    private let base: UnsafeMutableRawPointer

    init(_ plan: Plan) throws {
        guard !plan.overflow else { throw MoEError.tooLarge("the scratch size overflows") }
        // Scratch of a large call is hundreds of MiB touched once: transparent huge pages (2 MiB
        // aligned, MADV_HUGEPAGE) fault it in 512 times fewer page faults.
        let huge = plan.bytes >= Self.hugePageBytes
        bytes = huge ? (plan.bytes + Self.hugePageBytes - 1) / Self.hugePageBytes * Self.hugePageBytes : max(plan.bytes, 64)
        do { try MemoryBudget.check(bytes) } catch { throw MoEError.allocationFailed(bytes: bytes) }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, huge ? Self.hugePageBytes : 64, bytes) == 0, let raw else { throw MoEError.allocationFailed(bytes: bytes) }
        #if os(Linux)
        if huge { _ = madvise(raw, bytes, Int32(MADV_HUGEPAGE)) }   // advice only
        #endif
        base = raw
    }

    static let hugePageBytes = 2 << 20

    deinit { free(base) }

    func floats(_ offset: Int) -> UnsafeMutablePointer<Float> { (base + offset).assumingMemoryBound(to: Float.self) }
    func ints(_ offset: Int) -> UnsafeMutablePointer<Int32> { (base + offset).assumingMemoryBound(to: Int32.self) }
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
