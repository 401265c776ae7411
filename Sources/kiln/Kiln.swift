import Foundation
import KilnCommands

@main
enum Kiln {
    static func main() async {
        KilnCommand.prepareProcess()
        await KilnCommand.main()
    }
}
