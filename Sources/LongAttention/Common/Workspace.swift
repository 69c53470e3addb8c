import AttentionTensor

/// One worker's scratch: a 64-byte aligned region carved into float and int arrays. It does not
/// own its memory: ``WorkerScratch`` allocates every worker's region once per call.
struct Workspace {
    private let base: UnsafeMutableRawPointer
    private var used = 0
    private let capacity: Int

    init(base: UnsafeMutableRawPointer, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    /// Bytes for `floats` Float32 and `ints` Int32 values in up to `arrays` arrays, each 64-byte aligned.
    static func bytes(floats: Int, ints: Int = 0, arrays: Int = 8) throws -> Int {
        let (elements, o1) = floats.addingReportingOverflow(ints)
        let (raw, o2) = elements.multipliedReportingOverflow(by: 4)
        let (total, o3) = raw.addingReportingOverflow(arrays * 64)
        guard !o1, !o2, !o3, floats >= 0, ints >= 0 else {
            throw AttentionError.tooLarge(buffer: "scratch of \(floats) floats and \(ints) ints", bytes: nil, limit: nil)
        }
        return (max(total, 64) + 63) & ~63
    }

    mutating func floats(_ n: Int) -> UnsafeMutablePointer<Float> {
        take(n * 4).bindMemory(to: Float.self, capacity: n)
    }

    mutating func ints(_ n: Int) -> UnsafeMutablePointer<Int32> {
        take(n * 4).bindMemory(to: Int32.self, capacity: n)
    }

    private mutating func take(_ bytes: Int) -> UnsafeMutableRawPointer {
        let p = base + used
        used += (bytes + 63) & ~63
        precondition(used <= capacity, "workspace overrun: internal sizing error")
        return p
    }
}

/// The scratch of one call's workers, sized once and allocated before any worker starts (as
/// ggml's and PyTorch's CPU flash kernels do): worker `w` of ``Parallel/run(items:threads:_:)``
/// uses region `w`. The allocation goes through ``MemoryBudget``, so a block size or plan that
/// would need more memory than the budget allows is a thrown error, not the OOM killer.
struct WorkerScratch {
    let workers: Int
    let bytesPerWorker: Int
    private let base: UnsafeMutableRawPointer

    init(workers: Int, floats: Int, ints: Int = 0, arrays: Int = 8, purpose: String) throws {
        let per = try Workspace.bytes(floats: floats, ints: ints, arrays: arrays)
        let (total, overflow) = per.multipliedReportingOverflow(by: max(1, workers))
        guard !overflow else { throw AttentionError.tooLarge(buffer: "\(purpose) scratch of \(per) bytes × \(workers) workers", bytes: nil, limit: nil) }
        try checkBudget(bytes: total, purpose: "\(purpose) (\(per) bytes per worker × \(workers))")
        self.workers = max(1, workers)
        bytesPerWorker = per
        base = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: 64)
    }

    /// Worker `w`'s workspace.
    func workspace(_ w: Int) -> Workspace {
        precondition(w >= 0 && w < workers, "worker index outside the scratch")
        return Workspace(base: base + w * bytesPerWorker, capacity: bytesPerWorker)
    }

    func free() { base.deallocate() }
}

/// Throws ``AttentionError/tooLarge(buffer:bytes:limit:)`` when `bytes` of scratch exceed the memory budget.
func checkBudget(bytes: Int, purpose: String) throws {
    do {
        try MemoryBudget.check(bytes)
    } catch {
        throw AttentionError.tooLarge(buffer: "\(purpose) scratch", bytes: bytes, limit: MemoryBudget.availableBytes)
    }
}

/// Runs `items` work items on up to `threads` workers, each with its own ``Workspace`` of
/// `floats` floats and `ints` ints carved from one budget-checked allocation.
func runWithScratch(items: Int, threads: Int, floats: Int, ints: Int = 0, arrays: Int = 8, purpose: String,
                    _ worker: (inout Workspace, Parallel.WorkQueue) -> Void) throws {
    guard items > 0 else { return }
    let scratch = try WorkerScratch(workers: min(max(1, threads), items), floats: floats, ints: ints,
                                    arrays: arrays, purpose: purpose)
    defer { scratch.free() }
    Parallel.run(items: items, threads: threads) { w, queue in
        var ws = scratch.workspace(w)
        worker(&ws, queue)
    }
}
