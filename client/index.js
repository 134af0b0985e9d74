import NucleusLegend from './NucleusLegend';

export {NucleusLegend};
