import Foundation

/// How much memory one allocation may take, checked before large tensors and scratch are
/// allocated, so an absurd request is a thrown ``TensorError/allocationFailed(bytes:)`` instead of
/// the kernel's out-of-memory killer (Linux overcommits: `malloc` of 1 TB succeeds, touching it
/// does not) or a crash when `malloc` returns NULL under a `ulimit`.
///
/// The default budget is the tightest of what is available now: `MemAvailable` in
/// `/proc/meminfo`; the room left under this process's cgroup memory limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`); and the room left under `ulimit -v` (RLIMIT_AS) and `ulimit -d`
/// (RLIMIT_DATA). Set ``limitBytes`` to impose a fixed budget. Allocations under 64 MiB are not checked.
///
/// Caches that keep freed buffers for later calls (the mixture-of-experts workspace) register
/// with ``registerCache(held:release:)``: the bytes they hold count against a fixed budget, and
/// an allocation that does not fit makes them give their memory back before it is refused.
public enum MemoryBudget {
    private static let limit = Locked<Int?>(nil)

    /// A cache's bytes held and how to release them.
    private struct Cache: Sendable {
        let held: @Sendable () -> Int
        let release: @Sendable () -> Void
    }
    private static let caches = Locked<[Cache]>([])

    /// Registers a cache of freed memory: `held` reports its bytes, `release` frees them. Both are
    /// called without any lock of this type held.
    public static func registerCache(held: @escaping @Sendable () -> Int, release: @escaping @Sendable () -> Void) {
        caches.withLock { $0.append(Cache(held: held, release: release)) }
    }

    /// Bytes the registered caches hold now.
    public static var cachedBytes: Int { caches.withLock { $0 }.reduce(0) { $0 + $1.held() } }

    /// Empties every registered cache.
    public static func releaseCaches() { for c in caches.withLock({ $0 }) { c.release() } }

    /// A fixed budget in bytes, or nil for the memory available at each check.
    public static var limitBytes: Int? {
        get { limit.withLock { $0 } }
        set { limit.withLock { $0 = newValue } }
    }

    /// Allocations smaller than this are not checked.
    public static let checkedAbove = 64 << 20

    /// The budget now: ``limitBytes`` less the registered caches' bytes if set, else the tightest
    /// of the limits above (which see the caches' touched memory as used already).
    public static var availableBytes: Int {
        if let l = limitBytes { return l - cachedBytes }
        let meminfo = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)).flatMap { kilobytes("MemAvailable:", in: $0) }
        let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        return tightest(memAvailable: meminfo ?? Int(clamping: ProcessInfo.processInfo.physicalMemory),
                        cgroup: cgroupRoom(),
                        addressSpace: room(under: .addressSpace, used: status.flatMap { kilobytes("VmSize:", in: $0) }),
                        data: room(under: .data, used: status.flatMap { kilobytes("VmData:", in: $0) }))
    }

    /// The smallest of the known limits (nil: no such limit).
    public static func tightest(memAvailable: Int, cgroup: Int?, addressSpace: Int?, data: Int?) -> Int {
        [memAvailable, cgroup, addressSpace, data].compactMap { $0 }.map { max(0, $0) }.min() ?? memAvailable
    }

    /// Throws when `bytes` exceeds the budget, after emptying the registered caches if that
    /// would make room.
    public static func check(_ bytes: Int) throws {
        guard bytes >= checkedAbove else { return }
        if bytes <= availableBytes { return }
        guard cachedBytes > 0 else { throw TensorError.allocationFailed(bytes: bytes) }
        releaseCaches()
        if bytes > availableBytes { throw TensorError.allocationFailed(bytes: bytes) }
    }

    /// `key  1234 kB` in a /proc file, in bytes.
    static func kilobytes(_ key: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(key) {
            return line.split(separator: " ").compactMap { Int($0) }.first.map { $0 * 1024 }
        }
        return nil
    }

    /// Room under a resource limit given the bytes used against it; nil when unlimited.
    static func room(under resource: Platform.Resource, used: Int?) -> Int? {
        Platform.softLimit(resource).map { $0 - (used ?? 0) }
    }

    /// Room under this process's cgroup memory limit (v2, then v1); nil when unlimited or unknown.
    static func cgroupRoom() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8) else { return nil }
        func number(_ path: String) -> Int? {
            (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let path = String(parts[2])
            if parts[0] == "0" && parts[1].isEmpty {   // v2
                for dir in ["/sys/fs/cgroup" + path, "/sys/fs/cgroup"] {
                    if let max = number(dir + "/memory.max") {   // "max" (unlimited) does not parse
                        return max - (number(dir + "/memory.current") ?? 0)
                    }
                }
            } else if parts[1].split(separator: ",").contains("memory") {   // v1
                for dir in ["/sys/fs/cgroup/memory" + path, "/sys/fs/cgroup/memory"] {
                    if let limit = number(dir + "/memory.limit_in_bytes") {
                        // v1 reports "unlimited" as a huge page-aligned number.
                        if limit >= Int.max / 2 { return nil }
                        return limit - (number(dir + "/memory.usage_in_bytes") ?? 0)
                    }
                }
            }
        }
        return nil
    }
}
