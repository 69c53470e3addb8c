// libFuzzer entry point over the .npy reader: any bytes must give a tensor or a typed
// NumpyError — never a crash, a hang or an allocation the bytes cannot back.
//
// `make fuzz` builds this with -sanitize=fuzzer,address and -D FUZZING (main runs libFuzzer's driver).
// Built normally it replays the files named on its command line, so the committed corpus is
// also a regression check.
import AttentionTensor
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func npyFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    if let t = try? Numpy.readTensor(bytes: bytes, name: "fuzz") {
        precondition(t.count * 4 <= max(bytes.count, 1) * 2, "allocated more than the input could hold")
    }
    _ = try? Numpy.readIntegers(bytes: bytes, name: "fuzz")
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
struct NpyFuzzer {
    static func main() {
        #if FUZZING
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, { npyFuzzOne($0, $1) }))
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
                _ = data.withUnsafeBytes { npyFuzzOne($0.bindMemory(to: UInt8.self).baseAddress, data.count) }
                replayed += 1
            }
        }
        print("replayed \(replayed) inputs without a crash")
        #endif
    }
}
