// libFuzzer entry point over `attn`'s argument handling: the input, split at NUL bytes, is an
// argument list for `attn`; parsing and validation must end in a command or a typed error, never
// a crash. Commands are parsed and validated, not run (running would write files).
//
// `make fuzz` builds this with -sanitize=fuzzer,address and -D FUZZING; built normally it replays
// the files named on its command line.
import ArgumentParser
import AttnCommands
import Foundation
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func argsFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let args = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    _ = try? Attn.parseAsRoot(args)
    _ = Attn.message(for: ValidationError("probe"))
    return 0
}

@main
struct ArgsFuzzer {
    static func main() { runFuzzTarget { argsFuzzOne($0, $1) } }
}
