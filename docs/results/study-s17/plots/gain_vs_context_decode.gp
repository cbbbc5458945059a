set terminal pngcairo size 1000,600 noenhanced
set output 'gain_vs_context_decode.png'
set title 'decode: throughput gain of N co-located engines'
set logscale x 2
set xlabel 'context (prompt tokens)'
set ylabel 'gain over 1 engine (%)'
set grid
set key outside right top
set xzeroaxis lt -1
plot 'gain_vs_context_decode.dat' index 0 using 1:2:3:4 with yerrorlines lw 2 title 'qwen2.5-0.5b, 2 engines, MPS on', 'gain_vs_context_decode.dat' index 1 using 1:2:3:4 with yerrorlines lw 2 title 'qwen2.5-3b, 2 engines, MPS on'
