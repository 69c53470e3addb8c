// The shared main of the fuzz targets. Built with -D FUZZING (and -sanitize=fuzzer), it hands the
// entry point to libFuzzer's driver; built normally, it replays every file named on the command
// line (or in a named directory) once, so committed corpora double as regression inputs.
import Foundation

public typealias FuzzEntryPoint = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

#if FUZZING
/// libFuzzer's driver, linked from its runtime by -sanitize=fuzzer (our `main` replaces its own).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: FuzzEntryPoint) -> CInt
#endif

/// Runs `entry` under libFuzzer (FUZZING builds) or over the files on the command line.
public func runFuzzTarget(_ entry: FuzzEntryPoint) -> Never {
    #if FUZZING
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, entry))
    #else
    var replayed = 0
    for path in CommandLine.arguments.dropFirst() {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
        let files = isDirectory.boolValue
            ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            _ = data.withUnsafeBytes { entry($0.bindMemory(to: UInt8.self).baseAddress, data.count) }
            replayed += 1
        }
    }
    print("replayed \(replayed) inputs without a crash")
    exit(0)
    #endif
}
