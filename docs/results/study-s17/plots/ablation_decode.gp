set terminal pngcairo size 1000,600 noenhanced
set output 'ablation_decode.png'
set title 'decode: gain by what remains of the model'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set ylabel 'gain over 1 engine (%)'
set xtics rotate by -30
set grid ytics
set key outside right top
set xzeroaxis lt -1
plot 'ablation_decode.dat' using 2:xtic(1) title 'full (measured)', '' using 3 title 'attention only', '' using 4 title 'MLP only', '' using 5 title 'full (expected)'
