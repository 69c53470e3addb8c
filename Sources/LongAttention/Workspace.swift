/// One worker's scratch memory: a single 64-byte aligned allocation carved into float and int
/// arrays, made once when the worker starts and freed when it finishes.
struct Workspace {
    private let base: UnsafeMutableRawPointer
    private var used = 0
    private let capacity: Int

    /// Room for `floats` Float32 values and `ints` Int32 values, each array 64-byte aligned.
    init(floats: Int, ints: Int = 0, arrays: Int = 8) {
        capacity = (floats + ints) * 4 + arrays * 64
        base = UnsafeMutableRawPointer.allocate(byteCount: max(capacity, 64), alignment: 64)
    }

    mutating func floats(_ n: Int) -> UnsafeMutablePointer<Float> {
        let p = take(n * 4)
        return p.bindMemory(to: Float.self, capacity: n)
    }

    mutating func ints(_ n: Int) -> UnsafeMutablePointer<Int32> {
        let p = take(n * 4)
        return p.bindMemory(to: Int32.self, capacity: n)
    }

    private mutating func take(_ bytes: Int) -> UnsafeMutableRawPointer {
        let p = base + used
        used += (bytes + 63) & ~63
        precondition(used <= max(capacity, 64), "workspace overrun: internal sizing error")
        return p
    }

    func free() { base.deallocate() }
}
