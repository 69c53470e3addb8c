// libFuzzer entry point over `attn`'s argument handling: the input, split at NUL bytes, is an
// argument list for `attn`; parsing and validation must end in a command or a typed error, never
// a crash. Commands are parsed and validated, not run (running would write files).
//
// `make fuzz` builds this with -sanitize=fuzzer,address and -D FUZZING; built normally it replays
// the files named on its command line.
import ArgumentParser
import AttnCommands
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func argsFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let args = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    _ = try? Attn.parseAsRoot(args)
    _ = Attn.message(for: ValidationError("probe"))
    return 0
}

#if FUZZING
/// libFuzzer's driver, linked from its runtime by -sanitize=fuzzer (our `main` replaces its own).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt
#endif

@main
struct ArgsFuzzer {
    static func main() {
        #if FUZZING
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, { argsFuzzOne($0, $1) }))
        #else
        // Replay: every file named on the command line (or in a named directory) once.
        var replayed = 0
        for path in CommandLine.arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                _ = data.withUnsafeBytes { argsFuzzOne($0.bindMemory(to: UInt8.self).baseAddress, data.count) }
                replayed += 1
            }
        }
        print("replayed \(replayed) inputs without a crash")
        #endif
    }
}
