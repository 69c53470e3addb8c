// The operating-system calls this package makes beyond Foundation, in one place. The package is
// written for and tested on Linux (Glibc); Darwin's equivalents are named here so that a port
// (Accelerate instead of OpenBLAS) has one file to check, and any other C library stops the build
// with a message rather than a list of missing symbols.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#else
#error("swift-long-attention is Linux-only (Glibc): port the calls in Sources/AttentionTensor/Platform.swift first")
#endif

/// POSIX calls whose module or types differ between C libraries.
enum Platform {
    /// A resource limit the memory budget reads.
    enum Resource {
        /// `RLIMIT_AS` (`ulimit -v`).
        case addressSpace
        /// `RLIMIT_DATA` (`ulimit -d`).
        case data
    }

    /// `read(2)`.
    static func read(_ fd: CInt, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int {
        #if canImport(Glibc)
        return Glibc.read(fd, buffer, count)
        #else
        return Darwin.read(fd, buffer, count)
        #endif
    }

    /// `write(2)`.
    static func write(_ fd: CInt, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
        #if canImport(Glibc)
        return Glibc.write(fd, buffer, count)
        #else
        return Darwin.write(fd, buffer, count)
        #endif
    }

    /// The soft limit of `resource` in bytes; nil when unlimited (`RLIM_INFINITY`) or unreadable.
    static func softLimit(_ resource: Resource) -> Int? {
        var r = rlimit()
        #if canImport(Glibc)
        let which = switch resource {
        case .addressSpace: __rlimit_resource_t(RLIMIT_AS.rawValue)
        case .data: __rlimit_resource_t(RLIMIT_DATA.rawValue)
        }
        let infinity = rlim_t.max   // RLIM_INFINITY, (rlim_t) -1
        #else
        let which = switch resource {
        case .addressSpace: RLIMIT_AS
        case .data: RLIMIT_DATA
        }
        let infinity = rlim_t(Int64.max)   // RLIM_INFINITY, 2^63 - 1
        #endif
        guard getrlimit(which, &r) == 0, r.rlim_cur != infinity else { return nil }
        return Int(clamping: r.rlim_cur)
    }
}
