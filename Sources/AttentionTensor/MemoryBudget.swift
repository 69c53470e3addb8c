import Foundation
import Synchronization

/// How much memory one allocation may take, checked before large tensors are allocated, so an
/// absurd request is a thrown ``TensorError/allocationFailed(bytes:)`` instead of the kernel's
/// out-of-memory killer (Linux overcommits: `malloc` of 1 TB succeeds, touching it does not).
///
/// The default budget is the memory available now (`MemAvailable` in `/proc/meminfo`, or the
/// physical memory where that is unreadable). Set ``limitBytes`` to impose a fixed budget.
/// Allocations under 64 MiB are not checked.
public enum MemoryBudget {
    private static let limit = Mutex<Int?>(nil)

    /// A fixed budget in bytes, or nil for the memory available at each check.
    public static var limitBytes: Int? {
        get { limit.withLock { $0 } }
        set { limit.withLock { $0 = newValue } }
    }

    /// Allocations smaller than this are not checked.
    public static let checkedAbove = 64 << 20

    /// The budget now: ``limitBytes`` if set, else the memory available.
    public static var availableBytes: Int {
        if let l = limitBytes { return l }
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
            for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
                if let kb = line.split(separator: " ").compactMap({ Int($0) }).first { return kb * 1024 }
            }
        }
        return Int(clamping: ProcessInfo.processInfo.physicalMemory)
    }

    /// Throws when `bytes` exceeds the budget.
    public static func check(_ bytes: Int) throws {
        guard bytes >= checkedAbove else { return }
        let available = availableBytes
        if bytes > available { throw TensorError.allocationFailed(bytes: bytes) }
    }
}
