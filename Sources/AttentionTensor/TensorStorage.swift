import Foundation

/// 64-byte aligned Float32 memory shared by tensors (copy-on-write: only mutated when unique).
/// `@unchecked Sendable` because ``Tensor`` is a Sendable value: a storage shared by two tensors is
/// only read; a write first makes the writer's storage unique (`makeUnique`).
final class TensorStorage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    /// Whether the memory was asked for transparent huge pages (copies ask again).
    let hugePages: Bool

    /// Size of a transparent huge page on x86-64 and most arm64 Linux kernels.
    static let hugePageBytes = 2 << 20

    /// Uninitialised storage for `count` floats, or nil when the allocation fails.
    ///
    /// With `hugePages` (and at least one huge page of data), the memory is aligned to 2 MiB and
    /// advised `MADV_HUGEPAGE` on Linux: streaming a multi-GiB buffer (a KV cache read every decode
    /// step) then takes one TLB entry per 2 MiB instead of per 4 KiB. Elsewhere, or where the
    /// kernel declines, it is ordinary memory.
    init?(uninitializedCount count: Int, hugePages: Bool = false) {
        guard count >= 0, count <= Int.max / MemoryLayout<Float>.stride - Self.hugePageBytes else { return nil }
        var bytes = max(1, count) * MemoryLayout<Float>.stride
        let huge = hugePages && bytes >= Self.hugePageBytes
        if huge { bytes = (bytes + Self.hugePageBytes - 1) / Self.hugePageBytes * Self.hugePageBytes }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, huge ? Self.hugePageBytes : 64, bytes) == 0, let raw else { return nil }
        #if os(Linux)
        if huge { _ = madvise(raw, bytes, Int32(MADV_HUGEPAGE)) }   // advice only: failure leaves 4 KiB pages
        #endif
        pointer = raw.bindMemory(to: Float.self, capacity: max(1, count))
        self.count = count
        self.hugePages = hugePages
    }

    deinit { free(pointer) }
}

/// Checked element count of a shape: throws on negative dimensions or overflow.
public func elementCount(of shape: [Int]) throws -> Int {
    // The product of the non-zero dimensions must fit too: strides are computed from it, and a
    // shape like (0, 10^5, 10^5, 10^5, 10^5) is no tensor anyone meant.
    var n = 1, strideProduct = 1
    for s in shape {
        guard s >= 0 else { throw TensorError.invalidShape(shape) }
        let (p, o) = n.multipliedReportingOverflow(by: s)
        let (q, o2) = strideProduct.multipliedReportingOverflow(by: max(s, 1))
        guard !o, !o2, p <= Int.max / 8, q <= Int.max / 8 else { throw TensorError.invalidShape(shape) }
        n = p
        strideProduct = q
    }
    return n
}

/// Row-major (C order) strides of a shape.
public func rowMajorStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    var acc = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        strides[i] = acc
        acc *= max(shape[i], 1)
    }
    return strides
}

/// Steps a row-major multi-index over the first `axes` axes of `shape` (the last of them fastest).
/// Returns false after the last index, leaving `index` back at all zeros.
@inline(__always)
func advance(_ index: inout [Int], over shape: [Int], axes: Int) -> Bool {
    var axis = axes - 1
    while axis >= 0 {
        index[axis] += 1
        if index[axis] < shape[axis] { return true }
        index[axis] = 0
        axis -= 1
    }
    return false
}
